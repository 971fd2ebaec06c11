"""Runs several run specs one after another in ONE launched process group (torchrun), so the
multi-process tests pay the launch and imports once.

    torchrun --nproc_per_node 2 tests/helpers/mp_driver.py specs.json

``specs.json`` is a list of override lists (``["method=dpo", "name=dpo-p2", ...]``).
"""

from __future__ import annotations

import json
import sys

from harness.core.config import load_spec
from harness.pipelines.run import run


def main() -> None:
    for overrides in json.loads(open(sys.argv[1]).read()):
        run(load_spec(None, overrides))


if __name__ == "__main__":
    main()
