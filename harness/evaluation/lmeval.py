"""lm-evaluation-harness (0.4.x) through its Python API, on an in-memory model.

    harness eval runs/dpo-0001 eval.lm_eval_tasks='[toy_topic_choice, toy_topic_gen]'
    harness eval runs/dpo-0001 eval.lm_eval_tasks='[hellaswag]' eval.lm_eval_limit=100

Any lm-eval task name works, plus task YAMLs in local directories (``include``).  Built-in
worlds ship local tasks (``World.lm_eval_tasks()``: a directory of rendered YAMLs and their
items) so that this runs offline on a laptop; evaluation passes their directory here.
Results keep lm-eval's task versions, n-shot settings and sample counts next to the metrics.

Cost, per call, is the evaluation itself: lm-eval's modules are imported with this module (so a
sweep's fork server, which imports ``harness.evaluation.evaluate``, pays ~2 s of imports once per
worker instead of once per trial); task managers are cached per (include directories, built-in
tasks); and lm-eval's environment report, which shells out to ``pip list`` and friends (1.5 s a
call here) and is not part of our results, is skipped.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.core.registry import did_you_mean

log = logging.getLogger(__name__)

with contextlib.suppress(ImportError):  # eagerly: see the module docstring (a sweep worker imports this once)
    import lm_eval.evaluator  # noqa: F401
    import lm_eval.models.huggingface  # noqa: F401
    import lm_eval.tasks  # noqa: F401

#: task managers by (include directories, whether lm-eval's own tasks are indexed)
_MANAGERS: dict[tuple[tuple[str, ...], bool], tuple[Any, Any]] = {}


class LMEvalError(ValueError):
    """A task cannot be found or run; the message names it and the places searched."""


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def _keep_rng_state() -> Iterator[None]:
    """simple_evaluate reseeds python, numpy and torch globally; give the caller its state back."""
    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def task_manager(
    tasks: Sequence[str],
    include: Sequence[str | Path] = (),
    *,
    builtin: bool = True,
) -> Any:
    """An lm-eval ``TaskManager`` that knows every task in ``tasks``, or :class:`LMEvalError`
    naming the first unknown one.  Call it before expensive work to fail early."""
    from lm_eval.tasks import TaskManager

    for i, t in enumerate(tasks):
        if not isinstance(t, str) or not t:
            raise LMEvalError(f"lm_eval_tasks[{i}]: expected a task name, got {t!r}")
    include_dirs = [Path(p) for p in include]
    for d in include_dirs:
        if not d.is_dir():
            raise LMEvalError(f"lm-eval task directory {str(d)!r} does not exist")
    paths = [str(p.resolve()) for p in include_dirs]

    def manager(defaults: bool) -> Any:
        # a directory's YAMLs are read when it is indexed; a cached manager is reused only
        # while none of them changed (a world rebuilds its task files under the same directory)
        stamp = tuple((str(f), f.stat().st_mtime_ns) for d in include_dirs for f in sorted(d.rglob("*.yaml")))
        key = (tuple(paths), defaults)
        hit = _MANAGERS.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        tm = TaskManager(include_path=paths or None, include_defaults=defaults) if paths else TaskManager()
        _MANAGERS[key] = (stamp, tm)
        return tm

    # indexing lm-eval's ~15k built-in YAMLs takes 10-20 s here: skip it when every task is local
    if paths:
        local = manager(False)
        tm = local if not builtin or all(t in local.all_tasks for t in tasks) else manager(True)
    else:
        tm = manager(True)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        t = unknown[0]
        where = ", ".join(paths) if paths else "no local directories"
        raise LMEvalError(
            f"unknown lm-eval task {t!r}{did_you_mean(t, tm.all_tasks)} (searched lm-eval's tasks and {where})"
        )
    return tm


@contextlib.contextmanager
def _without_env_report() -> Iterator[None]:
    """simple_evaluate adds torch's ``collect_env`` report (subprocesses: ``pip list``, ``nvidia-smi``,
    ...) to every result; we keep none of it, and it costs more than a small task's evaluation."""
    import lm_eval.evaluator as ev

    real = ev.add_env_info
    ev.add_env_info = lambda results: None
    try:
        yield
    finally:
        ev.add_env_info = real


def _metrics(entry: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """lm-eval's ``"acc,none"`` / ``"exact_match,first_subject"`` keys -> plain metric names.

    The filter suffix is dropped when a metric has one filter; with several, the key keeps
    it as ``metric/filter``.  The filters seen are returned too.
    """
    parsed = []
    for key, value in entry.items():
        if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, _, flt = key.partition(",")
        parsed.append((metric, flt, float(value)))
    base = {m.removesuffix("_stderr") for m, _, _ in parsed}
    filters_of = {b: {f for m, f, _ in parsed if m.removesuffix("_stderr") == b} for b in base}
    out = {}
    for metric, flt, value in parsed:
        many = len(filters_of[metric.removesuffix("_stderr")]) > 1
        out[f"{metric}/{flt}" if many else metric] = value
    return out, sorted({f for _, f, _ in parsed})


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    include: Sequence[str | Path] = (),
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 16,
    apply_chat_template: bool | None = None,
    seed: int = 0,
    manager: Any = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate an in-memory HF model on lm-eval tasks.

    ``tasks`` may name any task in ``include`` directories or any of lm-eval's own tasks; ``manager`` is a
    :func:`task_manager` made earlier for the same tasks.  ``apply_chat_template=None``
    uses the tokenizer's chat template when it has one.  Returns ``{task: {"metrics":
    {acc: .., acc_stderr: .., ...}, "version", "n_shot", "n_samples", "filters",
    "higher_is_better"}}`` with one entry per task and group lm-eval reports.
    """
    tasks = list(tasks)
    if not tasks:
        return {}
    tm = manager if manager is not None else task_manager(tasks, include)
    if apply_chat_template is None:
        apply_chat_template = bool(getattr(tokenizer, "chat_template", None))

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    was_training = model.training
    model.eval()
    try:
        with _keep_rng_state(), _without_env_report():
            res = simple_evaluate(
                model=lm, tasks=tasks, task_manager=tm, num_fewshot=num_fewshot, limit=limit,
                apply_chat_template=apply_chat_template, log_samples=False, bootstrap_iters=1000,
                random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            )
    finally:
        model.train(was_training)
    if res is None:  # non-zero ranks of a distributed run
        return {}
    out: dict[str, dict[str, Any]] = {}
    n_samples = res.get("n-samples", {})
    for name, entry in res["results"].items():
        metrics, filters = _metrics(entry)
        out[name] = {
            "metrics": metrics,
            "version": res.get("versions", {}).get(name),
            "n_shot": res.get("n-shot", {}).get(name),
            "n_samples": (n_samples.get(name) or {}).get("effective"),
            "filters": filters,
            "higher_is_better": res.get("higher_is_better", {}).get(name, {}),
            "chat_template": apply_chat_template,
        }
    return out
