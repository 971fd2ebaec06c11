"""lm-evaluation-harness (0.4.x) through its Python API, on an in-memory model.

    harness eval runs/dpo-0001 eval.lm_eval_tasks='[toy_topic_choice, toy_topic_gen]'
    harness eval runs/dpo-0001 eval.lm_eval_tasks='[hellaswag]' eval.lm_eval_limit=100

Any lm-eval task name works, plus task YAMLs in local directories (``include``).  The toy
world ships two local tasks so that this runs offline on a laptop:

``toy_topic_choice`` (multiple choice, acc / acc_norm)
    a held-out toy instruction and four reviews that differ only in their subject; the
    right one is about the subject asked for.
``toy_topic_gen`` (generate until, exact_match)
    the model answers the instruction greedily; the first subject word it writes must be
    the one asked for.

Their YAMLs are templates in ``harness/assets/lm_eval_tasks``; :func:`toy_task_dir` writes
the items (generated deterministically from the toy world's held-out eval prompts) and the
rendered YAMLs into the toy world's cache directory on first use.  Results keep lm-eval's
task versions, n-shot settings and sample counts next to the metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.core.registry import did_you_mean
from harness.worlds import toy as toyworld

ASSETS = Path(__file__).resolve().parent.parent / "worlds" / "assets" / "toy"
TOY_TASKS = ("toy_topic_choice", "toy_topic_gen")
#: bump when the items or templates change: the rendered directory is keyed by it
TOY_TASKS_VERSION = "1"
N_CHOICES = 4

log = logging.getLogger(__name__)


class LMEvalError(ValueError):
    """A task cannot be found or run; the message names it and the places searched."""


# --------------------------------------------------------------------------- toy tasks


def toy_subject(prompt: str) -> str:
    """The one toy subject a toy prompt asks about."""
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    found = [s for s in toyworld.SUBJECTS if s in words]
    if len(found) != 1:
        raise ValueError(f"toy eval prompt {prompt!r} names {len(found)} subjects, expected one")
    return found[0]


def toy_task_items(world: toyworld.World) -> dict[str, list[dict[str, Any]]]:
    """The items of both toy tasks, from the world's held-out eval prompts (deterministic)."""
    rng = random.Random(world.seed * 101 + 7)
    choice_items, gen_items = [], []
    for prompt in world.eval_prompts():
        subject = toy_subject(prompt)
        gen_items.append({"prompt": prompt, "subject": subject})
        template = rng.choice(toyworld.RESPONSE_TEMPLATES)
        # neutral words: the choice must turn on the subject, not on sentiment
        adjectives = {k: rng.choice(toyworld.NEUTRAL) for k in ("a", "b", "c")}
        others = rng.sample([s for s in toyworld.SUBJECTS if s != subject], N_CHOICES - 1)
        label = rng.randrange(N_CHOICES)
        subjects = others[:label] + [subject] + others[label:]
        choice_items.append({
            "prompt": prompt,
            "choices": [template.format(s=s, **adjectives) for s in subjects],
            "label": label,
        })
    return {"toy_topic_choice": choice_items, "toy_topic_gen": gen_items}


def toy_task_dir(world: toyworld.World | None = None) -> Path:
    """Directory with the rendered toy task YAMLs and their data (built once per world)."""
    world = world or toyworld.ensure_world()
    target = world.root / f"lm_eval_tasks-v{TOY_TASKS_VERSION}"
    if (target / "DONE").exists():
        return target
    tmp = Path(tempfile.mkdtemp(dir=world.root, prefix=".lm_eval_tasks."))
    try:
        for name, rows in toy_task_items(world).items():
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        regex = r"\b(" + "|".join(sorted(toyworld.SUBJECTS, key=len, reverse=True)) + r")\b"
        for name in TOY_TASKS:
            text = (ASSETS / f"{name}.yaml.tmpl").read_text()
            # the YAML is double-quoted: backslashes must be escaped there
            text = text.replace("@DATA_DIR@", str(target)).replace("@SUBJECT_REGEX@", regex.replace("\\", "\\\\"))
            (tmp / f"{name}.yaml").write_text(text)
        (tmp / "DONE").write_text("ok\n")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "DONE").exists():  # lost a race to another process: its copy is the same
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    world: toyworld.World | None = None,
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
    if any(t in TOY_TASKS for t in tasks):
        include_dirs.insert(0, toy_task_dir(world))
    paths = [str(p) for p in include_dirs]
    # indexing lm-eval's ~15k built-in YAMLs takes 10-20 s here: skip it when every task is local
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if not builtin or all(t in local.all_tasks for t in tasks):
            tm = local
        else:
            tm = TaskManager(include_path=paths)
    else:
        tm = TaskManager()
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        t = unknown[0]
        where = ", ".join(paths) if paths else "no local directories"
        raise LMEvalError(
            f"unknown lm-eval task {t!r}{did_you_mean(t, tm.all_tasks)} (searched lm-eval's tasks and {where})"
        )
    return tm


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
    world: toyworld.World | None = None,
    manager: Any = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate an in-memory HF model on lm-eval tasks.

    ``tasks`` may name the toy tasks (their directory is added automatically), any task in
    ``include`` directories, or any of lm-eval's own tasks; ``manager`` is a
    :func:`task_manager` made earlier for the same tasks.  ``apply_chat_template=None``
    uses the tokenizer's chat template when it has one.  Returns ``{task: {"metrics":
    {acc: .., acc_stderr: .., ...}, "version", "n_shot", "n_samples", "filters",
    "higher_is_better"}}`` with one entry per task and group lm-eval reports.
    """
    tasks = list(tasks)
    if not tasks:
        return {}
    tm = manager if manager is not None else task_manager(tasks, include, world)
    if apply_chat_template is None:
        apply_chat_template = bool(getattr(tokenizer, "chat_template", None))

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    was_training = model.training
    model.eval()
    try:
        with _keep_rng_state():
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
