"""Where a quickstart sweep trial's wall time goes: training vs everything around it.

    nox -s bench -- sweep                                    # with the other benchmarks
    python benchmarks/bench_sweep_overhead.py                # one trial per quickstart method
    python benchmarks/bench_sweep_overhead.py --code /tmp/old-checkout   # the same for another checkout

Each trial is what ``sweeps/quickstart.yaml`` runs (toy:tiny, its ``base`` settings, 150 steps,
evaluation as configured there), one per method, with each method's default hyperparameters,
in sequence, sharing one cache directory as a sweep's trials do (the first trial fills the
reference-log-prob, tokenisation and baseline-sample caches; later ones hit them).  A trial runs
in its own interpreter that first imports what a sweep worker's fork server preloads
(``harness.sweeps.bootstrap.preload_imports``, timed as "imports": a forked trial inherits them,
so they are shown but not charged to the trial), then calls ``harness.training.runner.execute``
with timers around its phases: spec checks, data (load + tokenise), model load, the reference
pass, the training loop, saving, and each evaluation part (``eval.timing_s``).

``--code DIR`` measures the harness in DIR (PYTHONPATH) with this script's timers, so a before /
after comparison runs the same measurement on two checkouts (``git archive <commit> | tar -x``).
Nothing asserts on time.  The load average is printed: on a shared machine the absolute seconds
move with it; the shares move much less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# run as a script from a checkout without installing; a worker imports the code under test instead
if "--worker" not in sys.argv and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
       "TRANSFORMERS_VERBOSITY": "error", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
#: phases in the order a trial goes through them (eval parts are inserted before "save")
PHASES = ("spec checks", "data", "model load", "reference pass", "train loop", "other set-up")


def _flatten(prefix: str, d: dict[str, Any]) -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(key + ".", v)
        else:
            out.append(f"{key}={json.dumps(v) if isinstance(v, (list, bool)) or v is None else v}")
    return out


def trial_overrides(method: str, out_dir: Path, steps: int | None) -> list[str]:
    import yaml

    spec = yaml.safe_load(QUICKSTART.read_text())
    base = _flatten("", spec["base"])
    if steps is not None:
        base = [o for o in base if not o.startswith("train.max_steps=")] + [f"train.max_steps={steps}"]
    return [*base, f"method={method}", "tracking.mode=disabled", "seed=0", f"output_dir={out_dir}",
            f"name={method}-{time.time_ns()}"]


# --------------------------------------------------------------------------- worker


def worker(job: dict[str, Any]) -> dict[str, Any]:
    t_start = time.perf_counter()
    from harness.sweeps.bootstrap import preload_imports

    preload_imports()
    imports_s = time.perf_counter() - t_start
    from harness.core.config import load_spec
    from harness.training import runner
    from harness.training.loop import TrainHooks

    spent: dict[str, float] = {}
    names = {"check_spec": "spec checks", "ensure_spec_models": "spec checks", "prepare": "data",
             "load_model": "model load", "compute_references": "reference pass"}

    def timed(name: str) -> None:
        real = getattr(runner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                spent[names[name]] = spent.get(names[name], 0.0) + time.perf_counter() - t

        setattr(runner, name, wrapper)

    for name in names:
        timed(name)
    marks: dict[str, float] = {}
    hooks = TrainHooks(on_first_step=lambda: marks.setdefault("first", time.perf_counter()))
    spec = load_spec(None, job["overrides"])
    t0 = time.perf_counter()
    run = runner.execute(spec, hooks=hooks, tracking="disabled")
    execute_s = time.perf_counter() - t0
    s = json.loads((run.path / "summary.json").read_text())
    ev = s.get("eval") or {}
    parts = {f"eval: {k}": float(v) for k, v in (ev.get("timing_s") or {}).items() if k != "total"}
    eval_total = float((ev.get("timing_s") or {}).get("total", 0.0))
    setup = float(s["setup_time_s"])
    phases = {**{p: spent.get(p, 0.0) for p in PHASES[:4]}, "train loop": float(s["train_time_s"])}
    # the runner's set-up up to the first step that none of the timed functions covers
    phases["other set-up"] = max(setup - sum(spent.values()), 0.0)
    phases.update(parts)
    # evaluation work outside its timed parts (planning, writing samples)
    phases["eval: untimed rest"] = max(eval_total - sum(parts.values()), 0.0)
    # between the last step and evaluation: the loop's last bookkeeping and saving
    phases["save"] = max(float(s["teardown_time_s"]) - eval_total, 0.0)
    phases["other"] = max(execute_s - sum(phases.values()), 0.0)
    import harness

    return {"method": job["method"], "code": str(Path(harness.__file__).parent.parent), "imports_s": imports_s, "execute_s": execute_s, "phases": phases,
            "reference_cache": s.get("reference_cache"), "baseline_cache_hit": ev.get("baseline_cache_hit"),
            "results": {k: ev.get(k) for k in ("gold_reward_mean", "kl_mean", "win_rate", "length_controlled_winrate")}
            | {"lm_eval": {t: v.get("metrics") for t, v in (ev.get("lm_eval") or {}).items()}},
            "final_loss": s.get("final_loss")}


# --------------------------------------------------------------------------- driver


def run_trials(code: Path, methods: list[str], steps: int | None, work: Path) -> list[dict[str, Any]]:
    """One trial per method, in sequence, sharing a fresh cache -- except the built worlds (data,
    tokenizer, base models), which a sweep builds before its trials start: those come from the
    user's cache (built there first if missing) and are not charged to any trial."""
    from harness.store.cache import cache_root

    worlds = cache_root() / "worlds"
    env = {**os.environ, **ENV, "PYTHONPATH": str(code), "ALIGN_HARNESS_CACHE": str(work / "cache"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print("  building / finding toy:tiny (not timed) ...", flush=True)
    subprocess.run([sys.executable, "-c", "from harness.training.runner import ensure_model; ensure_model('toy:tiny')"],
                   env={**env, "ALIGN_HARNESS_CACHE": str(cache_root())}, check=True, cwd=work,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (work / "cache").mkdir(parents=True, exist_ok=True)
    (work / "cache" / "worlds").symlink_to(worlds, target_is_directory=True)
    out = []
    for m in methods:
        job = {"method": m, "overrides": trial_overrides(m, work / "runs", steps), "result": str(work / f"{m}.json")}
        path = work / f"{m}.job.json"
        path.write_text(json.dumps(job))
        print(f"  trial {m} ...", end="", flush=True)
        t = time.perf_counter()
        with open(work / f"{m}.log", "w") as log:
            # -c so that the code under test, not this checkout, is what `harness` imports
            proc = subprocess.run([sys.executable, "-c", "import sys, runpy; sys.argv = sys.argv[1:]; "
                                   "runpy.run_path(sys.argv[0], run_name='__main__')", str(Path(__file__).resolve()),
                                   "--worker", str(path)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  cwd=work)
        print(f" {time.perf_counter() - t:.0f} s", flush=True)
        if proc.returncode:
            raise SystemExit(f"trial {m} failed; log {work / f'{m}.log'}:\n{(work / f'{m}.log').read_text()[-3000:]}")
        out.append(json.loads(Path(job["result"]).read_text()))
    return out


def print_table(trials: list[dict[str, Any]], title: str) -> dict[str, Any]:
    keys: list[str] = []
    for t in trials:
        keys += [k for k in t["phases"] if k not in keys]
    order = [k for k in PHASES if k in keys] + sorted(k for k in keys if k.startswith("eval: ")) + \
        [k for k in ("save", "other") if k in keys]
    mean = {k: sum(t["phases"].get(k, 0.0) for t in trials) / len(trials) for k in order}
    trial_s = sum(mean.values())
    imports = sum(t["imports_s"] for t in trials) / len(trials)
    print()
    print(f"{title}: mean over {len(trials)} trials ({', '.join(t['method'] for t in trials)})")
    head = f"{'phase':<28} {'s':>7} {'share':>6}  " + " ".join(f"{t['method']:>7}" for t in trials)
    print(head)
    print("-" * len(head))
    for k in order:
        print(f"{k:<28} {mean[k]:>7.2f} {mean[k] / trial_s:>6.1%}  "
              + " ".join(f"{t['phases'].get(k, 0.0):>7.2f}" for t in trials))
    print(f"{'trial (forked from a worker)':<28} {trial_s:>7.2f} {1:>6.0%}")
    outside = 1 - mean["train loop"] / trial_s
    print(f"training share {mean['train loop'] / trial_s:.1%}, outside training {outside:.1%}; imports a fresh "
          f"interpreter would add: {imports:.2f} s (a sweep worker's fork server pays them once)")
    return {"phases_mean_s": mean, "trial_s": trial_s, "train_share": mean["train loop"] / trial_s,
            "imports_s": imports}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose harness is measured (default: this one)")
    ap.add_argument("--methods", default="dpo,ipo,simpo,orpo,kto", help="quickstart methods to run, one trial each")
    ap.add_argument("--steps", type=int, default=None, help="override train.max_steps (default: the quickstart's)")
    ap.add_argument("--quick", action="store_true", help="smoke check: dpo and kto, 30 steps")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        job = json.loads(args.worker.read_text())
        Path(job["result"]).write_text(json.dumps(worker(job), indent=1))
        return
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    load0 = os.getloadavg()
    print(f"Sweep overhead: quickstart trials of {args.code}; {os.cpu_count()} CPUs, load average {load0[0]:.1f} "
          f"(other processes share the CPU: seconds move with it, shares less)")
    if args.quick:
        args.methods, args.steps = "dpo,kto", args.steps or 30
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        trials = run_trials(args.code.resolve(), methods, args.steps, Path(tmp))
    summary = print_table(trials, "Per-phase wall time of a quickstart trial")
    print("results (same quantities before/after a change; see benchmarks/README.md):")
    for t in trials:
        print(f"  {t['method']:<6} final loss {t['final_loss']:.4f}  " + json.dumps(t["results"], sort_keys=True))
    load1 = os.getloadavg()
    print(f"load average {load0[0]:.1f} at start, {load1[0]:.1f} at end on {os.cpu_count()} CPUs")
    from bench_dpo import write_results

    write_results(args.results, "bench_sweep_overhead", {"code": str(args.code), "trials": trials, "summary": summary,
                                                         "loadavg": [load0[0], load1[0]], "steps": args.steps})


if __name__ == "__main__":
    main()
