"""FLAN-style multi-task mixtures: many tasks, each phrased through several instruction
templates, mixed by size with a per-task cap (or by explicit weights), from any world that
offers a *task catalog*.

    harness run method=sft data=flan:toy-instruct data.mixture.clusters=8 data.mixture.cap=3000 data.templates=zs+fs
    harness run method=sft data=flan:toy-instruct data.mixture.clusters=[arithmetic,counting] data.templates=zs+cot
    harness run method=sft data=flan:toy-instruct 'data.mixture.weights={arithmetic: 2, sentiment: 1}' data.mixture.size=4000

The recipe is that of Wei et al. 2021, "Finetuned Language Models Are Zero-Shot Learners"
(FLAN, arXiv:2109.01652) and Chung et al. 2022, "Scaling Instruction-Finetuned Language
Models" (arXiv:2210.11416):

* **clusters**: tasks come in clusters of related skills; some clusters are held out whole
  for zero-shot evaluation and never enter a mixture.  ``data.mixture.clusters=N`` takes the
  first N training clusters in the catalog's fixed order (the world documents it; FLAN's
  Figure 6 adds clusters in a fixed order too), a list names them.
* **templates** (``data.templates``, kinds joined by ``+``): ``zs`` zero-shot instructions,
  ``fs`` few-shot (``data.mixture.fs_k`` solved exemplars of the same task before the query),
  ``opt`` (the answer options listed, FLAN's OPTIONS suffix), ``cot`` (target = rationale,
  then "So the answer is X.", for tasks that have rationales).  A task's rows are split
  evenly over the requested kinds it has (largest remainder, in the order given); a task
  with none of them is left out and listed under ``dropped_tasks``.
* **mixing**: examples-proportional with a per-task cap K (Raffel et al. 2020, T5; FLAN:
  K = 3,000): task t's share is ``min(n_t, K) / sum_s min(n_s, K)`` where n_t is the number
  of distinct training items the task has.  With ``data.mixture.size`` unset the mixture
  has ``sum_t min(n_t, K)`` rows, so each task gets exactly ``min(n_t, K)`` distinct items;
  with a size, the rows are shared out in those proportions.  Or explicit weights per
  cluster (split evenly over its tasks) or per task (``data.mixture.weights``), shares of
  ``data.mixture.size`` rows (default: the examples-proportional total, so mixtures compare
  at equal size).  Integer counts come from the largest-remainder method, so they sum to
  the total exactly; a task asked for more rows than it has items repeats them (``repeats``).

The mixture is deterministic in ``data.mixture.seed`` (not the run's seed: every seed of a
sweep trains on the same mixture, as FLAN trains one mixture) and cached by content in
``<cache>/mixtures/<key>/`` (``rows.jsonl``, ``mixture.json``) through
:func:`harness.store.cache.build_dir`.  ``mixture.json`` is the resolved mixture: rows per
task and template kind, per cluster, per kind; a run saves it as ``<run>/mixture.json``
with the rows it actually trained on.

This module knows no world: a world offers ``task_catalog()`` returning a
:class:`TaskCatalog`, and the runner (``harness.training.runner``) connects the two.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from harness.core.config import ConfigError, DataSpec, to_dict
from harness.core.registry import did_you_mean
from harness.store.cache import build_dir, cache_dir, content_key

#: data recipes a source may name as ``<recipe>:<world>``
RECIPES = ("flan",)
#: bump when a mixture's rows or its mixture.json change for the same key parts
MIXTURE_VERSION = "1"


class MixtureError(ConfigError):
    """A mixture cannot be made as asked; the message names the ``data.*`` key."""


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class RecipeSource:
    """``data=flan:<world>``: a recipe applied to a world's task catalog."""

    recipe: str
    world: str


def parse_source(source: str) -> RecipeSource | None:
    """``flan:<world>`` -> RecipeSource; None for any other source (a world, a path, a hub id)."""
    head, sep, rest = source.partition(":")
    if not sep or head not in RECIPES:
        return None
    if not rest.strip():
        raise MixtureError(f"data.source={source!r}: name the world after '{head}:', e.g. data={head}:<world> "
                           "(`harness worlds` lists them)")
    return RecipeSource(head, rest.strip())


# --------------------------------------------------------------------------- the catalog a world offers


@dataclass(frozen=True)
class CatalogTask:
    name: str
    cluster: str
    #: template kinds the task can be rendered in
    kinds: tuple[str, ...]


@runtime_checkable
class TaskCatalog(Protocol):
    """What a world's ``task_catalog()`` returns: its tasks, clusters and templates, and rows."""

    #: names the content (world name and content version); part of every mixture's cache key
    identity: str
    #: template kind -> what it is
    template_kinds: Mapping[str, str]
    #: training clusters in the fixed order ``data.mixture.clusters=N`` takes the first N of
    train_clusters: tuple[str, ...]
    #: clusters held out whole for evaluation (never mixed)
    heldout_clusters: tuple[str, ...]
    tasks: tuple[CatalogTask, ...]

    def available(self, task: str, limit: int, seed: int) -> int:
        """Distinct training items of ``task`` (as drawn with ``seed``), counted up to ``limit``."""
        ...

    def render(self, task: str, counts: Mapping[str, int], seed: int, fs_k: int) -> list[dict[str, Any]]:
        """``counts[kind]`` rows of ``task`` per template kind, deterministic in ``seed``: each row
        ``{prompt, completion, task, cluster, template, template_kind, n_shots, uid}``, distinct
        training items as far as the task has them (then repeated, in the same order)."""
        ...


# --------------------------------------------------------------------------- resolving the spec


def parse_templates(text: str, key: str = "data.templates") -> tuple[str, ...]:
    """``zs+fs`` (or ``zs,fs``) -> ("zs", "fs"); empty parts and repeats are errors."""
    parts = [p.strip() for p in re.split(r"[+,]", text)]
    if not text.strip() or any(not p for p in parts):
        raise MixtureError(f"{key}={text!r}: give template kinds joined by '+', e.g. zs+fs")
    dup = sorted({p for p in parts if parts.count(p) > 1})
    if dup:
        raise MixtureError(f"{key}={text!r}: {', '.join(dup)} given twice")
    return tuple(parts)


def _cluster_tasks(catalog: TaskCatalog) -> dict[str, list[CatalogTask]]:
    out: dict[str, list[CatalogTask]] = {}
    for t in catalog.tasks:
        out.setdefault(t.cluster, []).append(t)
    return out


def resolve_clusters(catalog: TaskCatalog, clusters: int | list[str] | None) -> tuple[str, ...]:
    """The training clusters a mixture uses, in the catalog's order for a count, as given for a list."""
    order = tuple(catalog.train_clusters)
    if clusters is None:
        return order
    if isinstance(clusters, bool):
        raise MixtureError(f"data.mixture.clusters={clusters}: give a number of clusters or a list of names")
    if isinstance(clusters, int):
        if not 1 <= clusters <= len(order):
            raise MixtureError(f"data.mixture.clusters={clusters}: the catalog has {len(order)} training clusters "
                               f"({', '.join(order)}); use 1..{len(order)} or a list of names")
        return order[:clusters]
    names = list(clusters)
    if not names:
        raise MixtureError("data.mixture.clusters=[]: name at least one training cluster")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise MixtureError(f"data.mixture.clusters: {', '.join(dup)} listed twice")
    for c in names:
        if c in catalog.heldout_clusters:
            raise MixtureError(f"data.mixture.clusters: {c!r} is held out for zero-shot evaluation and never trained "
                               f"on (held out: {', '.join(catalog.heldout_clusters)})")
        if c not in order:
            raise MixtureError(f"data.mixture.clusters: unknown cluster {c!r}{did_you_mean(c, list(order))}; "
                               f"training clusters: {', '.join(order)}")
    return tuple(names)


def resolve_kinds(catalog: TaskCatalog, templates: str) -> tuple[str, ...]:
    kinds = parse_templates(templates)
    known = list(catalog.template_kinds)
    for k in kinds:
        if k not in catalog.template_kinds:
            raise MixtureError(f"data.templates: unknown template kind {k!r}{did_you_mean(k, known)}; the catalog "
                               "has " + ", ".join(f"{n} ({d})" for n, d in catalog.template_kinds.items()))
    return kinds


@dataclass(frozen=True)
class Resolved:
    """The names a spec resolves to, before anything is counted or rendered (cheap: what
    ``check_spec`` validates for every sweep trial)."""

    clusters: tuple[str, ...]
    kinds: tuple[str, ...]
    #: (task, the requested kinds it has, in the order requested)
    tasks: tuple[tuple[CatalogTask, tuple[str, ...]], ...]
    #: tasks of the chosen clusters that have none of the requested kinds
    dropped: tuple[str, ...]
    #: explicit weights per task (None: examples-proportional)
    weights: dict[str, float] | None


def resolve(catalog: TaskCatalog, data: DataSpec) -> Resolved:
    """Check ``data.mixture`` / ``data.templates`` against the catalog (names, kinds, weights)."""
    m = data.mixture
    clusters = resolve_clusters(catalog, m.clusters)
    kinds = resolve_kinds(catalog, data.templates)
    by_cluster = _cluster_tasks(catalog)
    tasks: list[tuple[CatalogTask, tuple[str, ...]]] = []
    dropped: list[str] = []
    for c in clusters:
        for t in by_cluster.get(c, []):
            have = tuple(k for k in kinds if k in t.kinds)
            if have:
                tasks.append((t, have))
            else:
                dropped.append(t.name)
    if not tasks:
        where = sorted({t.cluster for t in catalog.tasks if set(kinds) & set(t.kinds)} - set(catalog.heldout_clusters))
        raise MixtureError(f"data.templates={data.templates!r}: no task of the chosen clusters ({', '.join(clusters)}) "
                           f"has such templates; training clusters that do: {', '.join(where) or 'none'}")
    weights = _task_weights(catalog, m.weights, clusters, [t for t, _ in tasks]) if m.weights is not None else None
    return Resolved(clusters, kinds, tuple(tasks), tuple(dropped), weights)


def _task_weights(catalog: TaskCatalog, weights: Mapping[str, float], clusters: Sequence[str],
                  tasks: Sequence[CatalogTask]) -> dict[str, float]:
    """Weights per cluster (shared evenly by its tasks in the mixture) or per task -> per task.
    Every chosen cluster must be covered exactly once: a silently zero-weighted cluster is an error."""
    by_name = {t.name: t for t in catalog.tasks}
    included = {t.name for t in tasks}
    known = [*catalog.train_clusters, *by_name]
    out: dict[str, float] = {}
    for name, w in weights.items():
        if name in catalog.train_clusters:
            if name not in clusters:
                raise MixtureError(f"data.mixture.weights: cluster {name!r} has a weight but is not in "
                                   f"data.mixture.clusters ({', '.join(clusters)})")
            members = [t.name for t in tasks if t.cluster == name]
            for t in members:
                if t in out:
                    raise MixtureError(f"data.mixture.weights: task {t!r} is weighted twice (by itself and by its "
                                       f"cluster {name!r})")
                out[t] = float(w) / len(members)
        elif name in by_name:
            if name not in included:
                why = ("its cluster is not in data.mixture.clusters" if by_name[name].cluster not in clusters
                       else "it has none of the data.templates kinds")
                raise MixtureError(f"data.mixture.weights: task {name!r} has a weight but is not in the mixture ({why})")
            if name in out:
                raise MixtureError(f"data.mixture.weights: task {name!r} is weighted twice (by itself and by its "
                                   f"cluster {by_name[name].cluster!r})")
            out[name] = float(w)
        elif name in catalog.heldout_clusters:
            raise MixtureError(f"data.mixture.weights: {name!r} is a held-out cluster and is never trained on")
        else:
            raise MixtureError(f"data.mixture.weights: unknown cluster or task {name!r}{did_you_mean(name, known)}")
    missing = [t.name for t in tasks if t.name not in out]
    if missing:
        raise MixtureError(f"data.mixture.weights: no weight for task(s) {', '.join(missing)} of the chosen clusters; "
                           "weight every cluster (or task) of the mixture, or drop the cluster from data.mixture.clusters")
    if not any(w > 0 for w in out.values()):
        raise MixtureError("data.mixture.weights: every weight is 0; give at least one a positive weight")
    return out


# --------------------------------------------------------------------------- counting


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Integers proportional to ``weights`` that sum to ``total`` exactly (largest remainder;
    ties go to the earlier entry)."""
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    s = float(sum(weights))
    if any(w < 0 or not math.isfinite(w) for w in weights) or s <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {list(weights)}")
    quotas = [total * w / s for w in weights]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass
class TaskPlan:
    task: str
    cluster: str
    #: distinct training items of the task, counted up to max(cap, its rows)
    items: int
    #: min(items, cap): the task's size in examples-proportional mixing
    capped: int
    #: the task's share of the mixture
    rate: float
    rows: int
    by_template: dict[str, int] = field(default_factory=dict)

    @property
    def repeats(self) -> int:
        """Rows beyond the task's distinct items (items shown again)."""
        return max(0, self.rows - self.items)


def plan(catalog: TaskCatalog, data: DataSpec, resolved: Resolved | None = None) -> list[TaskPlan]:
    """Rows per task and template kind (the mixture's counts; nothing rendered yet)."""
    r = resolved or resolve(catalog, data)
    m = data.mixture
    tasks = [t for t, _ in r.tasks]
    # items are counted only as far as mixing needs: up to the cap, or up to a task's rows when it gets more
    capped = [catalog.available(t.name, m.cap, m.seed) for t in tasks]
    if r.weights is None and sum(capped) == 0:
        raise MixtureError(f"data.mixture: the chosen tasks have no training items ({', '.join(t.name for t in tasks)})")
    total = m.size if m.size is not None else sum(capped)
    rates = [r.weights[t.name] for t in tasks] if r.weights is not None else [float(c) for c in capped]
    counts = apportion(total, rates)
    s = sum(rates)
    out = []
    for (t, kinds), c, rate, n in zip(r.tasks, capped, rates, counts):
        items = catalog.available(t.name, n, m.seed) if n > m.cap else c
        if n and not items:
            raise MixtureError(f"data.mixture: task {t.name!r} gets {n} rows but has no training items")
        per_kind = apportion(n, [1.0] * len(kinds))
        out.append(TaskPlan(t.name, t.cluster, items, c, rate / s, n, dict(zip(kinds, per_kind))))
    return out


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class Mixture:
    """A built mixture: its rows file and the resolved description (``mixture.json``)."""

    path: Path
    info: dict[str, Any]

    def rows(self) -> list[dict[str, Any]]:
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]


def mixture_key(catalog: TaskCatalog, data: DataSpec, resolved: Resolved) -> dict[str, Any]:
    m = data.mixture
    return {"v": MIXTURE_VERSION, "catalog": catalog.identity, "clusters": list(resolved.clusters),
            "kinds": list(resolved.kinds), "cap": m.cap, "weights": resolved.weights, "size": m.size,
            "fs_k": m.fs_k, "seed": m.seed}


def describe(plans: Sequence[TaskPlan], resolved: Resolved, data: DataSpec, source: str, key: str) -> dict[str, Any]:
    """The resolved mixture as saved in ``mixture.json``."""
    by_cluster: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for p in plans:
        by_cluster[p.cluster] = by_cluster.get(p.cluster, 0) + p.rows
        for k, n in p.by_template.items():
            by_kind[k] = by_kind.get(k, 0) + n
    return {
        "source": source, "key": key, "version": MIXTURE_VERSION,
        "mixing": "weights" if resolved.weights is not None else "examples-proportional",
        "clusters": list(resolved.clusters), "templates": list(resolved.kinds),
        "spec": {"templates": data.templates, **to_dict(data.mixture)},
        "rows": sum(p.rows for p in plans), "by_cluster": by_cluster, "by_template": by_kind,
        "tasks": [{"task": p.task, "cluster": p.cluster, "items": p.items, "capped": p.capped, "rate": p.rate,
                   "rows": p.rows, "repeats": p.repeats, "by_template": p.by_template} for p in plans],
        "dropped_tasks": list(resolved.dropped),
    }


def build(catalog: TaskCatalog, data: DataSpec, source: str, root: Path | None = None) -> Mixture:
    """The mixture ``data`` asks for, built once per content key (``<cache>/mixtures/<key>/``)."""
    resolved = resolve(catalog, data)
    key = content_key(mixture_key(catalog, data, resolved), 24)
    target = (root or cache_dir("mixtures")) / key

    def make(tmp: Path) -> None:
        plans = plan(catalog, data, resolved)
        rows: list[dict[str, Any]] = []
        for p in plans:
            got = catalog.render(p.task, p.by_template, data.mixture.seed, data.mixture.fs_k)
            made = {k: sum(r["template_kind"] == k for r in got) for k in p.by_template}
            if made != p.by_template:  # the catalog broke its contract: never train on a mixture other than the plan
                raise RuntimeError(f"task catalog {catalog.identity} rendered {made} rows of {p.task}, asked {p.by_template}")
            rows += got
        random.Random(content_key({"shuffle": key}, 16)).shuffle(rows)
        with open(tmp / "rows.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        (tmp / "mixture.json").write_text(json.dumps(describe(plans, resolved, data, source, key), indent=1) + "\n")

    built = build_dir(target, make)
    return Mixture(built / "rows.jsonl", json.loads((built / "mixture.json").read_text()))


def counts_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """``{task: {template kind: rows}}`` of mixture rows (what a run trained on, counted)."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        per = out.setdefault(str(r["task"]), {})
        per[str(r["template_kind"])] = per.get(str(r["template_kind"]), 0) + 1
    return out
