"""Superseded by ``scripts/gpu_check.py``, which runs the same QLoRA checks (bitsandbytes ``Linear4bit``
layers on the GPU, the 4-bit matmul against its dequantised weight, loss falling with the frozen base
unchanged, peak memory QLoRA < LoRA < full) inside one GPU check of the training core.

    python scripts/gpu_check_qlora.py                        # = python scripts/gpu_check.py --out gpu-check
    python scripts/gpu_check_qlora.py --allow-cpu            # = python scripts/gpu_check.py --smoke --out gpu-check
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check  # noqa: E402

if __name__ == "__main__":
    smoke = "--allow-cpu" in sys.argv[1:]
    sys.exit(gpu_check.main(["--out", "gpu-check", *(["--smoke"] if smoke else [])]))
