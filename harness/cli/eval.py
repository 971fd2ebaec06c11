"""``harness eval``: evaluate a finished run, or any model without a run.

    harness eval runs/dpo-0001                                   # the run's own eval section
    harness eval runs/dpo-0001 eval.reward_model=runs/reward-0001 eval.kl_samples=8
    harness eval model=Qwen/Qwen2.5-0.5B-Instruct eval.judge=openai eval.judge_model=gpt-4o-mini \\
        eval.prompts=my_instructions.jsonl eval.baseline=Qwen/Qwen2.5-0.5B
    harness eval my_eval.yaml model=toy:tiny

With a run directory, the run's saved spec (``config.yaml``) plus the ``key=value``
overrides decides what is measured; the model is the run's ``final/`` weights (or adapter)
and the baseline its starting point (its reference for methods with one) unless
``eval.baseline`` names another.  Results replace the ``eval`` entry of the run's
``summary.json`` (atomically) and samples go to ``runs/<name>/samples.jsonl``.

Without a run directory, ``model=`` names what to evaluate and the results go to a new run
directory ``runs/eval-NNNN/`` (``config.yaml``, ``summary.json`` with ``eval``,
``samples.jsonl``), which reports list like any other run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import typer


def _fail(msg: str, code: int = 2) -> None:
    from harness.cli.main import fail

    fail(msg, code)


def _split_args(args: list[str]) -> tuple[Path | None, str | None, list[str]]:
    """(run dir, spec file, overrides) from the command line."""
    run_dir = spec_file = None
    overrides = []
    for a in args:
        if "=" in a:
            overrides.append(a)
            continue
        p = Path(a)
        if p.is_dir():
            if not (p / "config.yaml").is_file():
                _fail(f"{a}: not a run directory (it has no config.yaml)")
            if run_dir is not None:
                _fail(f"two run directories given: {run_dir} and {a}; evaluate one at a time")
            run_dir = p
        elif a.endswith((".yaml", ".yml")):
            if not p.is_file():
                _fail(f"spec file {a!r} does not exist")
            spec_file = a
        else:
            _fail(f"{a!r} is neither a run directory, a spec file nor a key=value override")
    if run_dir is not None and spec_file is not None:
        _fail("give a run directory or a spec file, not both (the run directory has its own spec)")
    return run_dir, spec_file, overrides


def _run_spec(run_dir: Path, overrides: list[str]) -> Any:
    from harness.core.config import merge_raw, parse_override, resolve
    from harness.store.runs import Run

    raw = Run(run_dir).config()
    if not isinstance(raw, dict) or not raw:
        _fail(f"{run_dir}/config.yaml is empty or not a mapping")
    pairs = dict(parse_override(o) for o in overrides)
    return resolve(merge_raw(raw, pairs))


def _model_spec(spec_file: str | None, overrides: list[str]) -> Any:
    """A RunSpec for evaluating a model without training: the method section is optional."""
    from harness.core.config import RunSpec, build, merge_raw, parse_override, read_yaml, resolve

    raw = read_yaml(spec_file) if spec_file else {}
    raw = merge_raw(raw, dict(parse_override(o) for o in overrides))
    if raw.get("method"):
        return resolve(raw)
    raw.pop("method", None)
    return build(RunSpec, raw)


def run_baseline(spec: Any, run_dir: Path) -> str:
    """The starting point of a run: its reference model for methods with one, else the model it started from."""
    from harness.core.contract import METHODS, load_methods
    from harness.store.runs import Run
    from harness.training.runner import ensure_model, resolve_model_path
    from harness.worlds.base import world_options

    load_methods()
    adapter = METHODS.get(spec.method_name)
    if adapter.needs_reference and spec.model.reference:
        return str(ensure_model(spec.model.reference, world_options(spec.data)) or spec.model.reference)
    return str(Run(run_dir).summary().get("model_path") or resolve_model_path(spec))


def evaluate_run_dir(run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Evaluate a finished run with its saved spec (+ overrides); store results in its summary."""
    from harness.evaluation.evaluate import evaluate_model_dir
    from harness.store.runs import Run
    from harness.training.runner import ensure_spec_models

    run_dir = Path(run_dir)
    spec = _run_spec(run_dir, overrides or [])
    ensure_spec_models(spec)
    run = Run(run_dir)
    if not run.final_dir.is_dir():
        status = run.live_status().get("status", "unknown")
        raise FileNotFoundError(f"{run_dir} has no final/ weights to evaluate (run status: {status})")
    result = evaluate_model_dir(run.final_dir, spec, baseline_path=run_baseline(spec, run_dir), out_dir=run.path)
    run.update_summary(eval=result)
    return result


def evaluate_model(spec: Any) -> tuple[Any, dict[str, Any]]:
    """Evaluate ``spec.model`` without training; results go to a new ``<output_dir>/eval-NNNN``."""
    from harness.core.config import spec_to_dict
    from harness.evaluation.evaluate import evaluate_model_dir
    from harness.modeling.generation import resolve_model_dir
    from harness.store.runs import Heartbeat, Run
    from harness.training.runner import default_model, ensure_spec_models, record_end, sigterm_interrupts

    t0 = time.perf_counter()
    ensure_spec_models(spec)
    # cheap checks before a directory is made or a model loads
    spec.model.name_or_path = default_model(spec)
    model_path = resolve_model_dir(spec.model.name_or_path)
    baseline = spec.eval.baseline
    if baseline is None and spec.model.reference:
        baseline = resolve_model_dir(spec.model.reference)
    run = Run.create(spec.output_dir, spec.name, prefix="eval")
    run.write_config(spec_to_dict(spec))
    run.write_env()
    tracker = None
    # a heartbeat shows the run alive (a killed one reads "stale"); SIGTERM ends it as "interrupted"
    with sigterm_interrupts(), Heartbeat(run):
        try:
            tracker = _tracker(spec, run)
            result = evaluate_model_dir(model_path, spec, baseline_path=baseline, out_dir=run.path, tracker=tracker)
            summary = {"kind": "eval", "status": "completed", "model_path": model_path, "eval": result,
                       "wall_time_s": time.perf_counter() - t0}
            run.write_summary(summary)
            tracker.log_summary(summary)
            run.set_status("completed")
            tracker.finish("completed")
            return run, result
        except KeyboardInterrupt as e:
            record_end(run, tracker, "interrupted", e)
            raise
        except BaseException as e:
            # recorded without ever hiding e behind a failed bookkeeping write
            record_end(run, tracker, "failed", e, error=f"{type(e).__name__}: {e}")
            raise


def _tracker(spec: Any, run: Any) -> Any:
    from harness.core.config import spec_to_dict
    from harness.store.tracking import Tracker, make_tracker

    mode = spec.tracking.mode
    if mode == "disabled":
        return Tracker()
    tr = make_tracker(None if mode == "auto" else mode, spec.tracking.project)
    tr.start(run.path, run.name, spec_to_dict(spec), group=spec.tracking.group, job_type=spec.tracking.job_type or "eval")
    return tr


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def print_result(result: dict[str, Any]) -> None:
    """The eval result as a table that reads at 80 columns; every ``±`` is a 95% CI over the eval
    prompts, printed as the report prints it (``harness.reporting.intervals``)."""
    from harness.cli.main import console
    from harness.reporting.intervals import CI_LABEL, NONE, Z95, pm
    from harness.reporting.tables import Table
    from harness.reporting.terminal import print_table

    n = result.get("n_prompts")

    def se_of_mean(key: str) -> float:  # a per-prompt score's std -> the standard error of its mean
        std = result.get(key)
        if isinstance(std, (int, float)) and isinstance(n, int) and n > 1:
            return float(std) / math.sqrt(n)
        return math.nan

    def cell(mean: Any, se: Any) -> str:
        half = Z95 * float(se) if isinstance(se, (int, float)) and math.isfinite(se) else math.nan
        return pm(mean, half)

    rows: list[list[str]] = []
    for score in ("gold_reward", "rm_score"):
        if f"{score}_mean" in result:
            base = result.get(f"baseline_{score}_mean")
            rows.append([score, cell(result[f"{score}_mean"], se_of_mean(f"{score}_std")),
                         cell(base, se_of_mean(f"baseline_{score}_std")) if base is not None else NONE])
    for key in ("kl_mean", "rm_accuracy"):
        if key in result:
            rows.append([key.removesuffix("_mean"), cell(result[key], result.get(f"{key.removesuffix('_mean')}_stderr")),
                         NONE])
    for kind, res in (result.get("judges") or {}).items():
        if "win_rate" in res:
            rows.append([f"win_rate ({kind})", cell(res["win_rate"], res.get("standard_error")), "50"])
            rows.append([f"LC win_rate ({kind})",
                         cell(res.get("length_controlled_winrate"), res.get("lc_standard_error")), "50"])
    for task, res in (result.get("lm_eval") or {}).items():
        metrics = res.get("metrics") or {}
        for m, v in metrics.items():
            name, _, flt = m.partition("/")
            if not name.endswith("_stderr"):
                stderr = metrics.get(f"{name}_stderr" + (f"/{flt}" if flt else ""))
                rows.append([f"{task} {m}", cell(v, stderr), NONE])
    base_groups = result.get("baseline_gold_reward_by_group") or {}
    for group, v in (result.get("gold_reward_by_group") or {}).items():
        rows.append([f"gold_reward [{group}]", pm(v, math.nan), pm(base_groups.get(group), math.nan)])
    baseline = result.get("baseline")
    table = Table(["metric", f"value {CI_LABEL}", "baseline"], rows,
                  caption=f"baseline: {baseline} (what the win rates judged the model against)" if baseline else "")
    pairs = result.get("rm_n_pairs")
    over = f"the {n} eval prompts" if n else f"the {pairs} held-out pairs" if pairs else "the evaluated examples"
    print_table(console, table, title="evaluation", wrap=("metric",), notes=[
        f"{CI_LABEL} over {over} (1.96 x the standard error the evaluation recorded); "
        "a value without ± has no recorded error (per-group means have none)"])
    timing = result.get("timing_s") or {}
    if timing:
        console.print("time (s): " + "  ".join(f"{k} {v:.1f}" for k, v in timing.items()), highlight=False)
    for where, what in {**(result.get("skipped") or {}), **(result.get("errors") or {})}.items():
        console.print(f"[yellow]{where}[/]: {what}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command(name="eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def eval_command(args: list[str] = typer.Argument(None, help="[RUN_DIR | SPEC.yaml] key=value ...")) -> None:
        """Evaluate a finished run (results into its summary.json) or any model=... (into runs/eval-NNNN/)."""
        from harness.cli.main import console, user_errors

        # the spec, the data or a named source is unusable: exit 2 with the message, no traceback
        errors: tuple[type[BaseException], ...] = (*user_errors(), FileNotFoundError)
        run_dir, spec_file, overrides = _split_args(args or [])
        keys = {o.split("=", 1)[0] for o in overrides}
        if run_dir is None and spec_file is None and not keys & {"model", "model.name_or_path"}:
            _fail("give a run directory (harness eval runs/<name>) or a model (harness eval model=...)")
        try:
            if run_dir is not None:
                result = evaluate_run_dir(run_dir, overrides)
                console.print(f"[green]evaluated[/] {run_dir} (summary.json: eval)")
            else:
                run, result = evaluate_model(_model_spec(spec_file, overrides))
                console.print(f"[green]evaluated[/] -> {run.path}")
        except errors as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as e:
            _fail(f"{type(e).__name__}: {e}", 1)
        print_result(result)
