"""Synthetic sweep stores with values chosen by the test, for the statistics of ``harness reproduce``.

    from reproduce_store import StoreBuilder   # used by tests/test_reproduce_stats.py

Runs are laid out and tagged the way a sweep writes them (``<root>/<arm>/trial-NNNN-seedS/`` with a
real resolved spec from :func:`harness.core.config.load_spec`, ``status.json``, a summary with the
sweep's keys and an ``eval`` section, and ``samples.jsonl`` with one row per prompt), so the code
under test reads them through the same results table as real stores.  Unlike
``tests/report_store.py`` every number is given by the test, so statistics can be checked against
hand-computed values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.config import load_spec, spec_to_dict
from harness.store.runs import Run, atomic_write_text

PROMPTS = [f"Tell me about the thing number {i}." for i in range(64)]


@dataclass
class StoreBuilder:
    root: Path
    sweep: str = "synthetic"
    objective: str = "eval.gold_reward_mean"
    direction: str = "maximize"
    #: per arm, its configurations in the order first written (a configuration's trial number)
    _configs: dict[str, list[str]] = field(default_factory=dict)

    def run(self, arm: str, params: dict[str, Any], seed: int, *, method: str = "dpo",
            gold: list[float] | None = None, base_gold: list[float] | None = None,
            preference: list[float] | None = None, scalars: dict[str, Any] | None = None,
            number: int | None = None, status: str = "completed", stages: dict[str, dict[str, Any]] | None = None,
            outputs: list[str] | None = None) -> Path:
        """One trial run of ``arm`` at ``params`` (run-spec keys) and ``seed``.

        ``gold`` / ``base_gold`` / ``preference``: per-prompt values (samples.jsonl; their means go to
        the summary); ``scalars``: further eval numbers (``kl_mean``, ...) or summary sections
        (``eval_loss_metrics``); ``stages``: name -> eval numbers of a pipeline stage run."""
        configs = self._configs.setdefault(arm, [])
        key = repr(sorted(params.items()))
        if key not in configs:
            configs.append(key)
        if number is None:
            number = configs.index(key)
        name = f"trial-{number:04d}-seed{seed}"
        overrides = [f"method={method}", f"seed={seed}", f"name={name}", f"output_dir={self.root / arm}",
                     "model=toy:tiny", "tracking.mode=disabled", *(f"{k}={v}" for k, v in params.items())]
        cfg = spec_to_dict(load_spec(None, overrides))
        cfg["tags"] = {"sweep": self.sweep, "method": method, "arm": arm, "trial_number": number,
                       "study_name": f"{self.sweep}/{arm}", "storage": "none", "seed_index": seed}
        run = Run.create(self.root / arm, name, prefix=arm)
        run.write_config(cfg)
        ev: dict[str, Any] = {}
        n = len(gold or preference or [])
        if n:
            rows = []
            for i in range(n):
                rows.append({"prompt": PROMPTS[i], "output": (outputs or ["x" * (10 + i % 7)] * n)[i],
                             "baseline_output": "y" * 12,
                             "preference": preference[i] if preference is not None else None,
                             "gold_reward": gold[i] if gold is not None else None,
                             "baseline_gold_reward": base_gold[i] if base_gold is not None else None})
            atomic_write_text(run.path / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            if gold is not None:
                ev["gold_reward_mean"] = sum(gold) / n
            if base_gold is not None:
                ev["baseline_gold_reward_mean"] = sum(base_gold) / n
            if preference is not None:
                ev["win_rate"] = 100 * sum(preference) / n
            ev["n_prompts"] = n
        sections = {k: v for k, v in (scalars or {}).items() if isinstance(v, dict)}
        ev.update({k: v for k, v in (scalars or {}).items() if not isinstance(v, dict)})
        summary = {"method": method, "status": status, "steps": 3, "final_loss": 0.5, "eval": ev,
                   "wall_time_s": 1.0, "sweep_name": self.sweep, "trial_number": number, "sweep_arm": arm,
                   "study_name": f"{self.sweep}/{arm}", "sweep_storage": "none", "sweep_objective": self.objective,
                   "sweep_direction": self.direction, "sweep_seed_index": seed, **sections}
        run.write_summary(summary)
        run.set_status(status)
        for stage, numbers in (stages or {}).items():
            s = Run.create(run.path / "stages", stage, prefix=stage)
            scfg = dict(cfg)
            scfg["tags"] = {**cfg["tags"], "stage": stage, "pipeline": name}
            s.write_config(scfg)
            s.write_summary({"method": stage, "status": "completed", "eval": dict(numbers)})
            s.set_status("completed")
        return run.path
