"""Reproduction reports: ``reports/<paper>.md`` and ``.html`` (the project's Jinja templates), their
figures in ``reports/plots/``, the numbers in ``reports/<paper>.json``, and the index ``reports/README.md``.

    harness reproduce simpo                   # runs what is missing, then writes these files
    harness reproduce simpo --report-only     # rewrites them from the stores named in reports/simpo.json

A report has: the claims table (claim, the paper's figure and numbers, ours with its interval,
the rule, the verdict); one section per claim (what was compared, the configurations chosen
and how stable that choice is under resampling, a figure of the data and of the bootstrap
distribution); one section per experiment (its generated spec, budget, derived data, the
leaderboard and plots of :mod:`harness.reporting`); and the reproduction details (the exact
command, the stores, versions, hardware, seeds, wall time, bootstrap settings).  The
``.json`` file holds the claims' numbers and the stores they came from: regenerating the report
from those stores gives the same numbers (tested).  Reports are regenerated, never hand-edited.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.reporting.intervals import NONE, fmt
from harness.reporting.leaderboard import leaderboard
from harness.reporting.plots import Plot, frontier_plot, method_colors, new_figure, png_bytes, winrate_plot
from harness.reporting.render import Section
from harness.reporting.tables import INTERVAL_LEGEND, Table, leaderboard_table, status_tables
from harness.reporting.templates import render
from harness.reproduce.claims import ClaimsFile, Statistic
from harness.reproduce.plan import Planned
from harness.reproduce.stats import (
    AGREES,
    DISAGREES,
    INCONCLUSIVE,
    ClaimResult,
    StoreData,
    front_at,
    frontier_fn,
)

INDEX_BEGIN = "<!-- reproduce:index:begin (harness reproduce rewrites this list) -->"
INDEX_END = "<!-- reproduce:index:end -->"
VERDICT_MARK = {AGREES: "agrees", DISAGREES: "DISAGREES", INCONCLUSIVE: "inconclusive"}


@dataclass
class ExperimentResult:
    planned: Planned
    store: StoreData
    results: list[ClaimResult] = field(default_factory=list)


def interval_text(value: float, lo: float, hi: float) -> str:
    if not math.isfinite(value):
        return NONE
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return fmt(value)
    return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"


def _side(sel: Any) -> str:
    if sel is None:
        return ""
    bits = [sel.arm]
    if sel.stage:
        bits.append(f"stage {sel.stage}")
    if sel.at:
        bits.append(", ".join(f"{k}={v}" for k, v in sel.at.items()))
    if sel.where:
        bits.append(", ".join(f"{m} in [{fmt(b.min) if b.min is not None else '-inf'}, "
                              f"{fmt(b.max) if b.max is not None else 'inf'}]" for m, b in sel.where.items()))
    metric = f"{sel.metric} of " if sel.metric else ""
    return metric + bits[0] + (f" ({'; '.join(bits[1:])})" if len(bits) > 1 else "")


def statistic_words(st: Statistic) -> str:
    """The statistic in one line, as the claims file declares it."""
    best = "each at its best configuration by the objective" + (f" {st.objective}" if st.objective else "")
    if st.kind == "difference":
        return f"{st.metric}: {_side(st.a)} minus {_side(st.b)}, {best}"
    if st.kind == "value":
        return f"{st.metric} of {_side(st.a)}, at its best configuration by the objective"
    if st.kind == "spread":
        return f"spread (max - min) of {st.metric} of {_side(st.a)} across {st.over}"
    if st.kind == "trend":
        x = f"{st.x_value} of each {st.over}" if st.x_value else st.over
        return f"slope of {st.metric} of {_side(st.a)} against {'log ' if st.log_x else ''}{x}"
    measure = "share of a's configurations above b's frontier" if st.measure == "share" else \
        "mean gap between a's and b's frontiers"
    anchor = ", frontiers anchored at the reference policy (KL 0)" if st.anchor else ""
    return f"frontier of {st.metric} against {st.x_metric}, a = {_side(st.a)}, b = {_side(st.b)}: {measure}{anchor}"


# --------------------------------------------------------------------------- figures


def claim_plot(paper: str, r: ClaimResult) -> Plot | None:
    """Left: the data the statistic used (values with their 95% intervals); right: the bootstrap
    distribution of the statistic with its interval and the claim's threshold."""
    st, ag = r.claim.statistic, r.claim.agreement
    assert st is not None and ag is not None
    if not math.isfinite(r.value):
        return None
    fig, axes = new_figure(11.0, 4.0, ncols=2)
    left, right = np.asarray(axes).ravel()
    cells = list(r.cells.values())
    if st.kind in ("difference", "value"):
        ys = np.arange(len(cells))
        vals = np.array([c.value for c in cells])
        err = np.array([[c.value - c.lo, c.hi - c.value] for c in cells]).T
        left.errorbar(vals, ys, xerr=np.nan_to_num(err), fmt="o", capsize=4, color="tab:blue")
        left.set_yticks(ys, [re.sub(r"(.{42})", r"\1\n", c.label) for c in cells], fontsize=7)
        left.set_xlabel(st.metric)
        left.invert_yaxis()
    elif st.kind in ("spread", "trend"):
        assert st.over is not None  # Statistic.validate: spread and trend statistics name their grid key
        xs = np.array([_num(c.params.get(st.over)) for c in cells])
        vals = np.array([c.value for c in cells])
        err = np.array([[c.value - c.lo, c.hi - c.value] for c in cells]).T
        left.errorbar(xs, vals, yerr=np.nan_to_num(err), fmt="o-", capsize=4, color="tab:blue")
        if st.log_x:
            left.set_xscale("log")
        if st.kind == "trend":
            ok = np.isfinite(vals) & (xs > 0 if st.log_x else np.isfinite(xs))
            if ok.sum() >= 2:
                x = np.log(xs[ok]) if st.log_x else xs[ok]
                slope, icpt = np.polyfit(x, vals[ok], 1)
                grid = np.linspace(x.min(), x.max(), 50)
                left.plot(np.exp(grid) if st.log_x else grid, icpt + slope * grid, "--", color="grey",
                          label=f"least-squares slope {fmt(slope)}")
                left.legend(fontsize=8)
        left.set_xlabel(f"{st.x_value} ({st.over})" if st.x_value else str(st.over))
        left.set_ylabel(st.metric)
    else:
        for side, color in (("a", "tab:blue"), ("b", "tab:orange")):
            series = r.full.series.get(side, [])
            sel = getattr(st, side)
            pts = [(x, y) for x, _, y in series]
            if side in r.full.anchors:
                pts = [r.full.anchors[side], *pts]
                left.scatter(*r.full.anchors[side], marker="s", color="black", s=30, zorder=3)
            if pts:
                left.scatter([p[0] for p in series], [p[2] for p in series], color=color, s=22,
                             label=f"{sel.arm} ({len(series)} configurations)")
                fx, fy = frontier_fn(pts)
                grid = np.linspace(min(fx.min(), 0.0), max(p[0] for p in pts) * 1.05, 100)
                left.plot(grid, front_at(fx, fy, grid), color=color, lw=1.2)
        left.set_xlabel(st.x_metric)
        left.set_ylabel(st.metric)
        left.legend(fontsize=8)
    left.grid(alpha=0.3)
    left.set_title("data: each value is a mean over seeds, bars its 95% interval", fontsize=9)
    reps = r.replicates[np.isfinite(r.replicates)]
    if len(reps):
        right.hist(reps, bins=min(40, max(10, len(reps) // 25)), color="lightsteelblue", edgecolor="white")
    for x, style, lab in ((r.value, "-", "all data"), (r.lo, ":", "95% interval"), (r.hi, ":", None)):
        if math.isfinite(x):
            right.axvline(x, color="black", ls=style, lw=1.2, label=lab)
    bounds = [ag.low, ag.high] if ag.direction == "within" else [ag.threshold]
    for i, t in enumerate(b for b in bounds if b is not None):
        right.axvline(t, color="tab:red", ls="--", lw=1.2, label=f"agreement: {ag.words()}" if i == 0 else None)
    right.legend(fontsize=8)
    right.set_xlabel(f"statistic ({st.kind})")
    right.set_title(f"bootstrap distribution ({r.resamples} resamples): {r.verdict}", fontsize=9)
    caption = (f"Claim {r.claim.id}. Left: the values the statistic is computed from, each a mean over its seeds "
               f"with a 95% bootstrap interval. Right: the statistic over {r.resamples} two-level bootstrap "
               f"resamples ({' and '.join(r.sources) or 'nothing resampled'}), its 95% interval (dotted) and the "
               f"agreement rule {ag.words()} (red dashed): {r.verdict}.")
    return Plot(f"{paper}-{r.claim.id}", caption, png_bytes(fig), f"claim {r.claim.id}: data and bootstrap", fig)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------- sections


def claims_table(results: list[ClaimResult]) -> Table:
    rows = []
    for r in results:
        c = r.claim
        assert c.statistic is not None  # load_claims: a claim with an experiment has a statistic and an agreement
        rows.append([c.id, c.claim, f"{c.source}: {c.paper_numbers}", statistic_words(c.statistic),
                     interval_text(r.value, r.lo, r.hi), c.agreement.words() if c.agreement else "",
                     VERDICT_MARK.get(r.verdict, r.verdict)])
    return Table(["claim", "what the paper claims", "paper (where: numbers)", "statistic compared",
                  "ours [95% CI]", "agrees if", "verdict"], rows, row_ids=[r.claim.id for r in results],
                 id="claims")


def _claim_section(paper: str, r: ClaimResult) -> Section:
    c = r.claim
    assert c.statistic is not None and c.agreement is not None  # load_claims: a claim with an experiment has both
    sec = Section(f"Claim {c.id}: {c.claim}")
    sec.text.append(f"Paper: {c.source}. {c.paper_numbers}")
    if c.deviation:
        sec.text.append(f"Our setting differs: {c.deviation}")
    sec.text.append(f"Statistic: {statistic_words(c.statistic)}. Agreement: the statistic {c.agreement.words()} "
                    "over its whole 95% interval; disagreement: over none of it.")
    sec.text.append(f"Result: {interval_text(r.value, r.lo, r.hi)} -> {r.verdict}. Interval: percentile, "
                    f"{r.resamples} resamples over {' and '.join(r.sources) or 'nothing'}; seeds per configuration: "
                    f"{', '.join(map(str, r.n_seeds)) or NONE}.")
    for side, cell in r.full.chosen.items():
        stab = r.stability.get(side)
        sec.text.append(f"Selected for {side}: {cell.label}" +
                        (f" (the same configuration in {stab:.0%} of resamples)" if stab is not None else ""))
    if r.cells:
        sec.tables.append(Table(["value", "seeds", "mean [95% CI]"],
                                [[s.label, str(s.n_seeds), interval_text(s.value, s.lo, s.hi)] for s in r.cells.values()]))
    sec.notes += r.notes
    try:
        plot = claim_plot(paper, r)
    except Exception as e:  # a figure must not take the report down
        plot = None
        sec.notes.append(f"figure failed: {type(e).__name__}: {e}")
    if plot is not None:
        sec.plots.append(plot)
    return sec


def _budget_words(planned: Planned, cf: ClaimsFile) -> str:
    b = cf.experiment(planned.experiment).budgets[planned.budget]
    parts = [f"{k}={getattr(b, k)}" for k in ("seeds", "trials", "steps", "model") if getattr(b, k) is not None]
    if b.set:
        parts.append(f"set={json.dumps(b.set)}")
    if b.overrides:
        parts.append("overrides: " + " ".join(b.overrides))
    return ", ".join(parts) or "the spec as it is"


def _experiment_section(paper: str, cf: ClaimsFile, er: ExperimentResult) -> Section:
    p, exp = er.planned, cf.experiment(er.planned.experiment)
    sec = Section(f"Experiment {p.experiment}: {exp.spec}")
    if exp.description:
        sec.text.append(exp.description)
    sw = p.sweep
    sec.text.append(f"Budget {p.budget}: {_budget_words(p, cf)}. Arms: "
                    + "; ".join(f"{a.label} ({a.method}, {a.budget} trials)" for a in sw.arms)
                    + f"; seeds {sw.seeds}; objective {sw.spec.objective.direction} {sw.spec.objective.metric}.")
    sec.text.append(f"Generated spec: {p.spec_file} (join with: harness worker {p.spec_file}); store: {er.store.root}.")
    if p.prepared:
        m = p.prepared
        sec.text.append(f"Derived data: {m.get('rows')} pairs from {m.get('source')} relabelled by "
                        f"{m.get('scorer')} ({m.get('ties_dropped')} ties dropped), {m.get('flipped')} "
                        f"({m.get('flip_fraction')}) flipped at random.")
    sec.notes += er.store.notes
    df = er.store.table
    trials = df[df["tags.stage"].isna()] if "tags.stage" in df.columns else df
    trials = trials.copy()
    trials.attrs = dict(df.attrs)
    if len(trials):
        board = leaderboard(trials)
        if not board.empty:
            sec.text.append(INTERVAL_LEGEND)
            sec.tables.append(leaderboard_table(board))
            colors = method_colors([str(a) for a in trials["arm"].dropna()])
            for name, maker in (("frontier", lambda: frontier_plot(trials, board, colors)),
                                ("winrate", lambda: winrate_plot(board, colors))):
                try:
                    plot = maker()
                except Exception as e:  # one broken plot must not take the report down
                    sec.notes.append(f"{name} plot failed: {type(e).__name__}: {e}")
                    continue
                if plot is not None:
                    plot.name = f"{paper}-{p.experiment}-{plot.name}"
                    sec.plots.append(plot)
        sec.tables += status_tables(trials)
    return sec


def _provenance(df: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col, key in (("env/git_sha", "git sha"), ("env/python", "python"), ("env/platform", "platform")):
        if col in df.columns and df[col].notna().any():
            out[key] = ", ".join(sorted({str(v) for v in df[col].dropna()}))
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "optuna", "bitsandbytes"):
        col = f"env/packages/{pkg}"
        if col in df.columns and df[col].notna().any():
            out[pkg] = ", ".join(sorted({str(v) for v in df[col].dropna()}))
    hw = [c for c in df.columns if c.startswith("env/hardware/")]
    for c in hw:
        vals = sorted({str(v) for v in df[c].dropna()})
        if vals:
            out[c.removeprefix("env/hardware/")] = ", ".join(vals)
    return out


def numbers(results: list[ExperimentResult]) -> list[dict[str, Any]]:
    return [r.numbers() for er in results for r in er.results]


def write_report(cf: ClaimsFile, results: list[ExperimentResult], out_dir: str | Path, *, command: str,
                 budget: str, elapsed_s: float | None = None) -> Path:
    """Write ``<out_dir>/<paper>.md``, ``.html``, ``.json`` and the figures; update the index; return the .md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paper = cf.key
    all_results = [r for er in results for r in er.results]
    counts = {v: sum(r.verdict == v for r in all_results) for v in dict.fromkeys(r.verdict for r in all_results)}
    ref = cf.paper
    cite = f"{ref.authors}, \u201c{ref.title}\u201d" + (f", arXiv:{ref.arxiv}" if ref.arxiv else "") + \
        (f", {ref.url}" if ref.url else "")
    sections = [Section("Claims", text=[
        f"{cite}. Budget {budget}. Each claim's statistic is computed on the runs of the sweep that tests it; its "
        "95% interval is a two-level bootstrap (seeds with replacement within each configuration, then the eval "
        "prompts, shared by every run), with configuration selection redone in every resample. Agrees: the whole "
        "interval satisfies the rule; disagrees: none of it does; inconclusive: it straddles the threshold.",
        "Verdicts: " + (", ".join(f"{n} {v}" for v, n in counts.items()) or "none")],
        tables=[claims_table(all_results)])]
    sections += [_claim_section(paper, r) for r in all_results]
    sections += [_experiment_section(paper, cf, er) for er in results]
    frames = [er.store.table for er in results if len(er.store.table)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    prov = _provenance(df) if len(df) else {}
    wall = float(pd.to_numeric(df.get("wall_time_s", pd.Series(dtype=float)), errors="coerce").sum()) if len(df) else 0.0
    seeds = sorted({s for er in results for s in er.planned.sweep.seeds})
    repro = Section("Reproduction", text=[
        f"Command: {command}",
        "Stores: " + "; ".join(str(er.store.root) for er in results),
        f"Seeds: {seeds}. Runs: {sum(len(c.runs) for er in results for c in er.store.cells)} completed. "
        f"Training + evaluation wall time, summed over runs: {wall / 60:.1f} min"
        + (f"; this invocation took {elapsed_s / 60:.1f} min." if elapsed_s is not None else "."),
        f"Bootstrap: {cf.bootstrap.resamples} resamples, seed {cf.bootstrap.seed} (one stream per claim: the seed "
        f"and the claim id), level {cf.bootstrap.level}, prompts resampled: {cf.bootstrap.prompts}."],
        tables=[Table(["", "value"], [[k, v] for k, v in prov.items()], caption="versions and hardware (env.json)")])
    sections.append(repro)
    title = f"Reproducing {ref.title}"
    meta = (f"harness reproduce {paper} --budget {budget}: {len(all_results)} claims; generated "
            f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from the stores named below. "
            "Regenerated by the command, never hand-edited.")
    plots_dir = out / "plots"
    plots_dir.mkdir(exist_ok=True)
    for stale in plots_dir.glob(f"{paper}-*.png"):
        stale.unlink()
    for s in sections:
        for p in s.plots:
            (plots_dir / f"{p.name}.png").write_bytes(p.png)
    md = out / f"{paper}.md"
    md.write_text(render("report.md.j2", title=title, meta=meta, sections=sections))
    (out / f"{paper}.html").write_text(render("report.html.j2", title=title, meta=meta, sections=sections))
    record = {"paper": paper, "title": ref.title, "budget": budget, "command": command,
              "report_only_command": f"harness reproduce {paper} --budget {budget} --report-only "
                                     f"--runs {_runs_root(results)}",
              "stores": {er.planned.experiment: str(er.store.root) for er in results},
              "claims": numbers(results),
              "claim_text": {r.claim.id: r.claim.claim for r in all_results},
              "bootstrap": {"resamples": cf.bootstrap.resamples, "seed": cf.bootstrap.seed,
                            "level": cf.bootstrap.level, "prompts": cf.bootstrap.prompts},
              "provenance": prov, "wall_time_s_summed": wall, "elapsed_s": elapsed_s}
    (out / f"{paper}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_index(out)
    return md


def _runs_root(results: list[ExperimentResult]) -> str:
    # <runs>/<paper>/<spec>/<budget>: the runs root is three levels up
    return str(results[0].store.root.parents[2]) if results else "runs/reproduce"


def index_lines(out_dir: str | Path) -> list[str]:
    """One line per claim of every report in ``out_dir`` (from each report's .json)."""
    lines = []
    for p in sorted(Path(out_dir).glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or "claims" not in rec or "paper" not in rec:
            continue
        for c in rec["claims"]:
            text = rec.get("claim_text", {}).get(c["id"], c["id"])
            ours = interval_text(_num(c.get("value")), _num(c.get("lo")), _num(c.get("hi")))
            lines.append(f"- **{rec['paper']}/{c['id']}**: {text} — ours {ours}: **{c['verdict']}** "
                         f"({rec.get('budget')} budget) — `{rec.get('report_only_command', rec.get('command'))}` — "
                         f"[{rec['paper']}.md]({rec['paper']}.md)")
    return lines


def write_index(out_dir: str | Path) -> Path:
    """Rewrite the list between the index markers of ``<out_dir>/README.md``; the rest of the file is kept.

    A README without the markers gets them where its "(none yet)" placeholder is, else at its end."""
    readme = Path(out_dir) / "README.md"
    text = readme.read_text() if readme.exists() else "# reports/\n\nReproduction reports, regenerated by " \
        "`harness reproduce`, never hand-edited.\n"
    block = "\n".join([INDEX_BEGIN, *(index_lines(out_dir) or ["_(none yet)_"]), INDEX_END])
    if INDEX_BEGIN in text and INDEX_END in text:
        head, rest = text.split(INDEX_BEGIN, 1)
        text = head + block + rest.split(INDEX_END, 1)[1]
    elif "_(none yet)_" in text:
        text = text.replace("_(none yet)_", block, 1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text)
    return readme
