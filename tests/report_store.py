"""Synthetic sweep stores for the results/report/leaderboard tests (rendering only: no training).

The layout and file contents follow what ``harness.sweeps.spec`` and ``harness.training.runner`` write:
``<root>/<arm>/trial-NNNN-seedS/`` with a real resolved spec (``harness.core.config.load_spec``)
tagged the way sweeps tag trials, a real ``env.json``, ``metrics.jsonl`` rows like the
training loop's, a summary with the runner's keys, an ``eval`` section shaped like
``harness.evaluation.evaluate``'s (flat main-judge columns, ``judges``, ``lm_eval``, timings) and the
sweep's summary keys; and, when asked, a real Optuna study per arm whose trials mirror the
runs.  Metric values come from a seeded generator with a known reward-vs-KL trade-off;
``Store.values`` keeps every eval dict written so tests recompute means and intervals
independently.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.config import load_spec, spec_to_dict
from harness.store.runs import Run, atomic_write_json, environment

#: the toy world's gold reward as a pairwise judge (``harness.evaluation.judges`` scorer identity)
JUDGE = {"backend": "scorer", "model": "gold_reward@1", "prompt_version": "none", "mode": "hard",
         "tie_tolerance": 0.0}
JUDGE_ID = "scorer:gold_reward@1[hard]"
RM_JUDGE = {"backend": "reward_model", "model": "runs/reward-0001", "prompt_version": "rm-chat-v1"}
#: per method: the hyperparameter a sweep varies, its values per configuration, a quality offset
PLAN = {
    "dpo": ("beta", [0.05, 0.3], 4.0),
    "ipo": ("beta", [0.1, 0.5], 1.0),
    "simpo": ("gamma", [0.5, 1.5], 6.0),
    "orpo": ("beta", [0.05, 0.2], -2.0),
    "kto": ("beta", [0.1, 0.4], 0.0),
}
#: per method, how far its training loss sits above DPO's: IPO's squared loss is two orders of
#: magnitude larger, which flattens every other curve on a shared axis
LOSS_SCALE = {"ipo": 300.0}
#: prompt groups of a multi-task world (``harness.evaluation.evaluate`` writes ``gold_reward_by_group``)
GROUPS = ("cluster/arithmetic", "cluster/sentiment", "heldout", "seen")
PAIRWISE = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "discrete_win_rate",
            "avg_length", "length_controlled_winrate", "lc_standard_error")

_ENV: dict[str, Any] = {}


def env() -> dict[str, Any]:
    if not _ENV:
        _ENV.update(environment())
    return _ENV


@dataclass
class Store:
    root: Path
    sweep: str
    storage: str | None
    #: run path relative to root -> the eval dict written (completed runs only)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: run path relative to root -> (arm, config index, seed, status)
    runs: dict[str, tuple[str, int, int, str]] = field(default_factory=dict)


def _pairwise(rng: random.Random, win: float, cfg: int, judge: dict[str, Any]) -> dict[str, Any]:
    n = 64
    wins = round(win / 100 * n)
    return {"win_rate": win, "standard_error": 3.0 + rng.uniform(0, 1), "n_wins": wins, "n_wins_base": n - wins,
            "n_draws": 0, "n_total": n, "discrete_win_rate": 100 * wins / n,
            "avg_length": 60 + 10 * cfg + rng.uniform(-5, 5),
            "length_controlled_winrate": min(95.0, max(5.0, win - 2 + rng.uniform(-2, 2))),
            "lc_standard_error": 2.5 + rng.uniform(0, 1), "judge": dict(judge),
            "judging": {"n_calls": 2 * n, "n_cached": 0, "n_retries": 0, "n_failed": 0}}


def eval_results(method: str, cfg: int, seed: int, judge: dict[str, Any] | None = None,
                 groups: tuple[str, ...] = (), baseline: str = "toy") -> dict[str, Any]:
    rng = random.Random(f"{method}-{cfg}-{seed}")
    quality = PLAN[method][2]
    kl = 2.0 + 6.0 * cfg + rng.uniform(-0.5, 0.5)
    gold = 0.1 * quality + 0.8 * math.log(kl) + rng.uniform(-0.2, 0.2)
    win = min(95.0, max(5.0, 50 + 4 * quality + 3 * cfg + rng.uniform(-3, 3)))
    main = _pairwise(rng, win, cfg, judge or JUDGE)
    second = _pairwise(rng, min(95.0, win + 5), cfg, RM_JUDGE)
    ev: dict[str, Any] = {
        "n_prompts": 64, "prompts_source": "toy:eval_prompts", "candidate": "final", "baseline": baseline,
        "sampling": {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 32, "seed": 0}, "skipped": {},
        "avg_new_tokens": 14.5, "finish_reasons": {"eos": 60, "stop": 0, "length": 4},
        "baseline_avg_length": 58.0, "gold_reward_mean": gold, "gold_reward_std": 0.5,
        "baseline_gold_reward_mean": 0.1, "baseline_gold_reward_std": 0.5,
        "rm_score_mean": gold * 0.9 + rng.uniform(-0.1, 0.1), "rm_score_std": 0.4, "reward_model": dict(RM_JUDGE),
        "kl_mean": kl, "kl_std": 0.8, "kl_stderr": 0.1 + 0.02 * cfg,
        "judges": {"gold": main, "reward_model": second},
        "lm_eval": {
            "toy_mc": {"metrics": {"acc": 0.4 + 0.02 * quality + rng.uniform(-0.02, 0.02), "acc_stderr": 0.05},
                       "version": 1.0, "n_shot": 0, "n_samples": 20, "filters": ["none"],
                       "higher_is_better": {"acc": True}, "chat_template": True},
            "toy_gen": {"metrics": {"exact_match": 0.2 + rng.uniform(0, 0.05), "exact_match_stderr": 0.04},
                        "version": 1.0, "n_shot": 0, "n_samples": 20, "filters": ["none"],
                        "higher_is_better": {"exact_match": True}, "chat_template": True},
        },
        "timing_s": {"generation": 1.2, "judge": 0.3, "lm_eval": 2.0, "total": 4.1},
    }
    if groups:  # per-group means scattered around the overall mean; the baseline's are fixed
        ev["gold_reward_by_group"] = {g: gold + 0.3 * (i - 1.5) + rng.uniform(-0.1, 0.1) for i, g in enumerate(groups)}
        ev["baseline_gold_reward_by_group"] = {g: 0.1 - 0.05 * i for i, g in enumerate(groups)}
    ev.update({k: main[k] for k in PAIRWISE})
    ev["judge"], ev["judging"] = main["judge"], main["judging"]
    return ev


def _metrics(run: Run, seed: int, steps: int, torn: bool = False, scale: float = 1.0) -> None:
    rng = random.Random(f"m-{run.path}-{seed}")
    for s in range(1, steps + 1):
        loss = scale * (0.69 * math.exp(-s / 12) + 0.1 + rng.uniform(0, 0.02))
        run.log_metrics({"step": s, "loss": loss, "rewards/accuracies": min(1.0, 0.5 + s / 40), "lr": 1e-4,
                         "grad_norm": 1.0 / s, "tokens_per_s": 9000.0, "epoch": s / steps})
        if s % 5 == 0:
            run.log_metrics({"step": s, "eval/loss": loss + 0.05})
    if torn:  # a run killed while appending
        with open(run.path / "metrics.jsonl", "a") as f:
            f.write('{"step": 99, "loss": 0.')


@dataclass
class _Sweep:
    root: Path
    name: str
    storage: str | None
    overrides: tuple[str, ...]

    def open_run(self, arm: str, number: int, seed: int, seed_index: int, hp_key: str, hp: float) -> Run:
        name = f"trial-{number:04d}-seed{seed}"
        # model=toy: what the runner records for a run that names no model on toy data
        spec = load_spec(None, ["model=toy", f"method={arm}", f"method.{hp_key}={hp}", f"seed={seed}", f"name={name}",
                                f"output_dir={self.root / arm}", "train.max_steps=20", "train.eval_every=5",
                                *self.overrides])
        cfg = spec_to_dict(spec)
        cfg["tags"] = {"sweep": self.name, "method": arm, "arm": arm, "trial_number": number,
                       "study_name": f"{self.name}/{arm}", "storage": self.storage, "seed_index": seed_index}
        cfg["tracking"].update(group=self.name, job_type=arm)
        run = Run.create(self.root / arm, name, prefix=arm)
        run.write_config(cfg)
        atomic_write_json(run.path / "env.json", env())
        run.set_status("running", pid=12345, host="test")
        return run

    def summary_keys(self, arm: str, number: int, seed_index: int) -> dict[str, Any]:
        if self.storage is None:
            return {"sweep_name": self.name, "trial_number": number, "sweep_arm": arm}
        return {"sweep_name": self.name, "trial_number": number, "sweep_storage": self.storage,
                "study_name": f"{self.name}/{arm}", "sweep_objective": "length_controlled_winrate",
                "sweep_direction": "maximize", "sweep_arm": arm, "sweep_seed_index": seed_index}


def _study(storage: str, kind: str, name: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if kind == "sqlite":
        return optuna.create_study(study_name=name, storage=storage, direction="maximize")
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return optuna.create_study(study_name=name, storage=JournalStorage(JournalFileBackend(storage)),
                               direction="maximize")


def _add_trial(study: Any, hp_key: str, hp: float, cfg: int, value: float | None = None, state: str = "COMPLETE",
               values: list[float] | None = None) -> None:
    import optuna

    dist = {hp_key: optuna.distributions.FloatDistribution(0.01, 2.0, log=True),
            "train.lr": optuna.distributions.FloatDistribution(1e-6, 1e-3, log=True)}
    study.add_trial(optuna.trial.create_trial(
        params={hp_key: hp, "train.lr": 1e-4 * (1 + cfg)}, distributions=dist, value=value,
        state=optuna.trial.TrialState[state], intermediate_values={5: 40.0} if state == "PRUNED" else None,
        user_attrs={"values": values} if values else {}))


def make_store(root: Path, methods: tuple[str, ...] = tuple(PLAN), seeds: tuple[int, ...] = (0, 1, 2),
               n_configs: int = 2, study: str | None = "sqlite", partial: bool = True,
               sweep: str = "quickstart", overrides: tuple[str, ...] = (),
               judge: dict[str, Any] | None = None, groups: tuple[str, ...] = (), baseline: str = "toy") -> Store:
    """A sweep's store: per method (one arm each), ``n_configs`` trials x ``seeds``, all completed;
    with ``partial``, dpo also has a failed, a running and a pruned trial, and kto (when listed)
    only failed and running ones.  ``study``: ``sqlite``, ``journal`` or None (no Optuna study).
    ``groups``: prompt groups whose means the eval records (e.g. :data:`GROUPS`); ``baseline``:
    the model the win rates were judged against."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    storage = None
    if study == "sqlite":
        storage = f"sqlite:///{root / 'study.db'}"
    elif study == "journal":
        storage = str(root / "study.journal")
    sw = _Sweep(root, sweep, storage, overrides)
    out = Store(root, sweep, storage)
    for arm in methods:
        hp_key, hp_values, _ = PLAN[arm]
        st = _study(storage, study, f"{sweep}/{arm}") if storage is not None and study is not None else None
        only_partial = partial and arm == "kto"
        number = 0
        for cfg in range(n_configs):
            hp = hp_values[cfg % len(hp_values)] * (1 + cfg // len(hp_values))
            objective: list[float] = []
            for seed_index, seed in enumerate(seeds):
                run = sw.open_run(arm, number, seed, seed_index, hp_key, hp)
                rel = str(run.path.relative_to(root))
                if only_partial:
                    status = "failed" if seed != seeds[-1] else "running"
                    _metrics(run, seed, 3 if status == "failed" else 7, torn=status == "running")
                    if status == "failed":
                        run.set_status("failed", error="NonFiniteLoss: loss is nan at step 3; lower train.lr")
                    out.runs[rel] = (arm, cfg, seed, status)
                    continue
                _metrics(run, seed, 20, scale=LOSS_SCALE.get(arm, 1.0))
                ev = eval_results(arm, cfg, seed, judge, groups, baseline)
                summary = {
                    "method": arm, "status": "completed", "steps": 20, "final_loss": 0.15,
                    "final_metrics": {"loss": 0.15, "rewards/accuracies": 1.0}, "eval_loss_metrics": {"loss": 0.2},
                    "train_time_s": 4.0 + cfg, "tokens": 40000, "tokens_per_s": 10000.0 - 500 * cfg,
                    "peak_memory_mb": 350.0 + 10 * cfg, "trainable_params": 3_700_000, "total_params": 3_700_000,
                    "trainable_share": 1.0, "data": "toy:paired", "model_path": "/cache/toy/base",
                    "reference_cache": {"hits": 2, "misses": 0}, "setup_time_s": 1.5, "device": "cpu",
                    "eval": ev, "teardown_time_s": 0.2, "wall_time_s": 9.0 + cfg + seed * 0.1, "gpu_hours": 0.0,
                    **sw.summary_keys(arm, number, seed_index),
                }
                run.write_summary(summary)
                run.set_status("completed")
                out.values[rel] = ev
                out.runs[rel] = (arm, cfg, seed, "completed")
                objective.append(ev["length_controlled_winrate"])
            if st is not None and objective:
                _add_trial(st, hp_key, hp, cfg, sum(objective) / len(objective), values=objective)
            number += 1
        if partial and arm == "dpo":
            for status in ("failed", "running", "pruned"):
                run = sw.open_run(arm, number, seeds[0], 0, hp_key, 0.9)
                _metrics(run, seeds[0], 6, torn=status == "running")
                if status == "failed":
                    run.set_status("failed", error="OutOfMemoryError: CUDA out of memory")
                elif status == "pruned":
                    run.set_status("pruned", reason="trial pruned at step 5 (median pruner)")
                out.runs[str(run.path.relative_to(root))] = (arm, 9, seeds[0], status)
                if st is not None and status != "running":
                    _add_trial(st, hp_key, 0.9, 0, state="FAIL" if status == "failed" else "PRUNED")
                number += 1
    return out
