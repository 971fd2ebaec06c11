"""Optuna studies in the report: opening a sweep's study read-only, and per method its
optimisation history and hyperparameter importances.

    harness report runs/quickstart       # the report's "Optuna" section

A report never fails because a study cannot be opened: the reason becomes a note.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.reporting.plots import Plot, new_figure, png_bytes

#: below this many completed trials importances are drawn grey and flagged: optuna's default
#: evaluator (PED-ANOVA) contrasts the top 10% of trials with all of them, and under 20 trials
#: that top set is one trial, so the ranking says where the best trial happened to land
MIN_IMPORTANCE_TRIALS = 20


def _storage_candidates(storage: str, bases: Sequence[Path]) -> list[str]:
    """Where a storage URL or path written by a sweep may be, seen from here."""
    if "://" in storage and not storage.startswith("sqlite:///"):
        return [storage]
    path_str = storage.removeprefix("sqlite:///")
    p = Path(path_str).expanduser()
    paths = [p] if p.is_absolute() else [Path.cwd() / p, *(b / p for b in bases), *(b / p.name for b in bases)]
    found = [q.resolve() for q in paths if q.is_file()]
    return [f"{'sqlite:///' if storage.startswith('sqlite:///') else ''}{q}" for q in dict.fromkeys(found)]


def load_study(storage: str, study_name: str, bases: Sequence[Path]) -> tuple[Any | None, str]:
    """The Optuna study, or None and why.  Never creates a storage file that is not there."""
    try:
        import optuna
    except ImportError as e:
        return None, f"optuna is not installed ({e})"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cands = _storage_candidates(storage, bases)
    if not cands:
        return None, f"storage {storage!r} not found"
    errors = []
    for url in cands:
        try:
            if url.startswith("sqlite:///"):
                store: Any = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
            elif "://" in url:
                kw = {"connect_args": {"connect_timeout": 5}} if url.startswith("postgres") else {}
                store = optuna.storages.RDBStorage(url, engine_kwargs=kw, skip_compatibility_check=True)
            else:
                from optuna.storages.journal import JournalFileBackend, JournalStorage

                store = JournalStorage(JournalFileBackend(url))
            return optuna.load_study(study_name=study_name, storage=store), ""
        except Exception as e:  # a report never fails because a study cannot be opened
            errors.append(f"{type(e).__name__}: {e}")
    return None, f"could not open study {study_name!r} at {storage!r} ({'; '.join(errors)[:300]})"


def _trial_method(t: Any) -> str | None:
    for d in (t.user_attrs, t.params, t.system_attrs):
        v = d.get("method")
        if isinstance(v, str):
            return v
    return None


def optuna_plots(study: Any, label: str, methods: Sequence[str], colors: dict[str, Any],
                 objective: str | None = None) -> tuple[list[Plot], list[str]]:
    """Optimisation history and hyperparameter importances per method of one study."""
    import optuna
    from matplotlib.ticker import MaxNLocator

    plots: list[Plot] = []
    notes: list[str] = []
    if len(study.directions) != 1:
        return [], [f"study {label}: multi-objective studies are not plotted"]
    direction = study.direction
    trials = study.get_trials(deepcopy=False)
    tagged = {_trial_method(t) for t in trials} - {None}
    by_method: dict[str, list[Any]] = {}
    if tagged:
        for t in trials:
            by_method.setdefault(_trial_method(t) or "?", []).append(t)
    else:
        by_method[" + ".join(methods) if methods else label] = trials
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    for method, ts in sorted(by_method.items()):
        complete = [t for t in ts if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
        states: dict[str, int] = {}
        for t in ts:
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        state_text = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        if not complete:
            notes.append(f"{method}: no completed trial in study {label} ({state_text or 'no trials'})")
            continue
        c = colors.get(method, "C0")
        fig, ax = new_figure(6.5, 3.2)
        nums = np.array([t.number for t in complete])
        vals = np.array([t.value for t in complete], dtype=float)
        ax.scatter(nums, vals, color=c, s=25, label="completed trial", zorder=3)
        best = np.maximum.accumulate(vals) if direction == optuna.study.StudyDirection.MAXIMIZE else np.minimum.accumulate(vals)
        ax.step(nums, best, where="post", color="black", lw=1.2, label="best so far")
        pruned = [t for t in ts if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
        if pruned:
            ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                       marker="x", color="grey", label="pruned (last report)", zorder=2)
        ax.set_xlabel("trial number")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"objective: {objective}" if objective else "objective")
        ax.set_title(f"{method}: optimisation history ({state_text})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        plots.append(Plot(f"history_{slug}_{method}",
                          f"{method}: optimisation history ({len(complete)} completed trials, best so far as a line)",
                          png_bytes(fig), f"objective per trial for {method}", fig))
        varying = sorted(p for p in {k for t in complete for k in t.params}
                         if p != "method" and len({repr(t.params.get(p)) for t in complete}) > 1)
        if len(complete) < 2 or not varying:
            notes.append(f"{method}: hyperparameter importances need at least 2 completed trials with varying "
                         f"parameters ({len(complete)} completed, varying: {', '.join(varying) or 'none'})")
            continue
        used = [t for t in complete if all(p in t.params for p in varying)]
        try:
            sub = optuna.create_study(direction=direction)
            sub.add_trials(used)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna flags its importance API as experimental
                imp = optuna.importance.get_param_importances(sub, params=varying)
        except Exception as e:  # too few distinct trials for the evaluator, etc.
            notes.append(f"{method}: hyperparameter importances unavailable ({type(e).__name__}: {e})")
            continue
        few = len(used) < MIN_IMPORTANCE_TRIALS
        fig, ax = new_figure(6, 0.9 + 0.45 * len(imp))
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color="#b8b8b8" if few else c, hatch="//" if few else None,
                edgecolor="#888888" if few else None)
        ax.set_xlabel("importance (optuna PED-ANOVA, normalised)")
        rests = f"rests on {len(used)} completed trial{'s' if len(used) != 1 else ''}"
        ax.set_title(f"{method}: hyperparameter importance, {rests}"
                     + (f"\nfewer than {MIN_IMPORTANCE_TRIALS}: greyed, indicative only" if few else ""),
                     fontsize=10, color="#666666" if few else "black")
        ax.grid(axis="x", alpha=0.3)
        caption = f"{method}: hyperparameter importance ({rests}"
        caption += (f"; fewer than {MIN_IMPORTANCE_TRIALS}, so greyed: with this few trials the ranking "
                    "is mostly noise)" if few else ")")
        plots.append(Plot(f"importance_{slug}_{method}", caption, png_bytes(fig),
                          f"hyperparameter importances for {method}", fig))
    return plots, notes

