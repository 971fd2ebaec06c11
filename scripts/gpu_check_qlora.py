"""GPU check of the PEFT axis: QLoRA with bitsandbytes' CUDA kernels, and peak GPU memory
of full fine-tuning vs LoRA vs QLoRA on the same model and batch, in bf16.

    python scripts/gpu_check_qlora.py                  # one CUDA GPU; about 1-2 minutes on an H100
    python scripts/gpu_check_qlora.py --size tiny --allow-cpu   # smoke test of the code path, no GPU

Needs torch with CUDA, transformers, peft and bitsandbytes (``pip install 'align-harness[qlora]'``);
nothing is downloaded: the model is a randomly initialised Llama (default ~0.64B parameters,
so that weights and optimizer state, not activations, decide the memory) written to a temp
directory and loaded back through ``from_pretrained``, the path a real checkpoint takes.  The
adapters are built by ``harness.modeling.peft_setup`` itself, as ``harness run peft=...`` builds them.

Checks (exit status 1 if any fails): the 4-bit layers are bitsandbytes ``Linear4bit`` with their
weights on the GPU; a 4-bit matmul agrees with the dequantised weight's; each parameterisation
lowers the loss on a fixed batch; the frozen 4-bit base is unchanged by training; and peak
memory orders as QLoRA < LoRA < full.  Tests never import this file.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import peft_setup  # noqa: E402
from harness.core.config import LoraSpec, PeftSpec, QuantSpec, RunSpec  # noqa: E402

SIZES: dict[str, dict[str, int]] = {
    # weights dominate: 12 layers of 2048 wide, a small vocabulary so embeddings stay minor
    "small": {"hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": 12, "num_attention_heads": 16,
              "vocab_size": 8192},
    "tiny": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4,
             "vocab_size": 512},
}


def build_model_dir(root: Path, size: str) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = SIZES[size]
    cfg = LlamaConfig(max_position_embeddings=1024, tie_word_embeddings=False,
                      num_key_value_heads=shape["num_attention_heads"], **shape)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    path = root / f"llama-{size}"
    model.save_pretrained(path)
    del model
    return path


def mem_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def check_bnb_kernels(model: Any, device: torch.device) -> list[str]:
    """The quantised layers are bitsandbytes' and compute on the device, matching their dequantised weight."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    problems = []
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    if not layers:
        return ["no bitsandbytes Linear4bit layer in the QLoRA model"]
    layer = layers[0]
    if layer.weight.device.type != device.type:
        problems.append(f"4-bit weight is on {layer.weight.device}, not {device}")
    w = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.bfloat16)
    x = torch.randn(4, w.shape[1], device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        got = layer(x).float()
    want = (x @ w.t()).float()
    if layer.bias is not None:
        want = want + layer.bias.float()
    err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-6)
    print(f"  bitsandbytes {bnb.__version__}: {len(layers)} Linear4bit layers, weight on {layer.weight.device}, "
          f"quant_type {layer.weight.quant_state.quant_type}, 4-bit matmul vs dequantised: rel err {err:.2e}")
    if err > 2e-2:
        problems.append(f"4-bit matmul disagrees with the dequantised weight (rel err {err:.3g})")
    return problems


def run_one(kind: str, path: Path, device: torch.device, steps: int, batch: int, seq: int) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    spec = RunSpec(peft=PeftSpec(kind=kind, lora=LoraSpec(r=16, alpha=32.0, dropout=0.0),
                                 quant=QuantSpec(quant_type="nf4", double_quant=True, compute_dtype="bf16")))
    kw = peft_setup.load_kwargs(spec.peft, device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kw)
    if not kw:
        model.to(device)
    model = peft_setup.apply(model, spec, "causal_lm")
    load_mb = mem_mb(device)
    problems = check_bnb_kernels(model, device) if kind == "qlora" else []
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad} if kind != "none" else {}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4 if kind == "none" else 1e-3)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    model.train()
    losses = []
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    step_s = (time.perf_counter() - t0) / steps
    trainable, total = peft_setup.param_counts(model)
    after = dict(model.named_parameters())
    changed = [n for n, p in frozen.items() if not torch.equal(after[n].detach(), p)]
    if changed:
        problems.append(f"{kind}: frozen base weights changed: {changed[:3]}")
    if not losses[-1] < losses[0]:
        problems.append(f"{kind}: loss did not fall on a fixed batch ({losses[0]:.4f} -> {losses[-1]:.4f})")
    out = {"kind": kind, "trainable": trainable, "total": total, "share": trainable / total, "load_mb": load_mb,
           "peak_mb": mem_mb(device), "step_s": step_s, "loss0": losses[0], "loss1": losses[-1], "problems": problems}
    del model, opt, params, frozen, after
    gc.collect()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="small")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--allow-cpu", action="store_true", help="smoke-test the code path without a GPU (no memory numbers)")
    args = ap.parse_args()

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("error: no CUDA GPU visible (torch.cuda.is_available() is False); this check measures GPU memory. "
              "Use --allow-cpu --size tiny for a CPU smoke test.", file=sys.stderr)
        return 2
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        print(f"error: bitsandbytes cannot be imported ({e}); pip install 'align-harness[qlora]'", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, size {args.size}, batch {args.batch} x seq {args.seq}, "
          f"{args.steps} AdamW steps, bf16 autocast")
    t_all = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model_dir(Path(tmp), args.size)
        for kind in ("none", "lora", "qlora"):
            row = run_one(kind, path, device, args.steps, args.batch, args.seq)
            rows.append(row)
            print(f"  {kind:6s} done: peak {row['peak_mb']:.0f} MiB, {row['step_s'] * 1e3:.0f} ms/step")
    label = {"none": "full", "lora": "LoRA r=16 (bf16 base)", "qlora": "QLoRA r=16 (NF4+DQ base)"}
    print(f"\n{'parameterisation':28s} {'trainable':>12s} {'share':>8s} {'after load':>11s} {'peak':>10s} "
          f"{'ms/step':>8s}  loss first -> last")
    for r in rows:
        print(f"{label[r['kind']]:28s} {r['trainable']:12,d} {r['share']:8.2%} {r['load_mb']:9.0f}Mi "
              f"{r['peak_mb']:8.0f}Mi {r['step_s'] * 1e3:8.1f}  {r['loss0']:.4f} -> {r['loss1']:.4f}")
    problems = [p for r in rows for p in r["problems"]]
    if device.type == "cuda":
        peak = {r["kind"]: r["peak_mb"] for r in rows}
        if not peak["qlora"] < peak["lora"] < peak["none"]:
            problems.append(f"peak memory does not order QLoRA < LoRA < full: {peak}")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    for p in problems:
        print(f"FAIL: {p}")
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
