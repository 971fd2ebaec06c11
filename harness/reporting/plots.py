"""The report's figures (matplotlib, object-oriented API: no pyplot state, no GUI backend): the
reward-vs-KL frontier, win rates per method, training curves.

    harness report runs/quickstart       # embeds them in index.html, saves them in report/plots/

Each function returns a :class:`Plot` (PNG bytes and a caption saying what is drawn) or None
when the results hold nothing to draw.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.reporting.intervals import isnan
from harness.reporting.leaderboard import DEFAULT_OBJECTIVES, PROMPTS, SEEDS, label, numeric, row_label
from harness.store.runs import read_jsonl


@dataclass
class Plot:
    """One figure: ``title`` is its caption (what is drawn, in words), ``fig`` the matplotlib
    figure it was drawn from (kept for tests that read its axes)."""

    name: str
    title: str
    png: bytes
    alt: str
    fig: Any = field(default=None, repr=False, compare=False)


def new_figure(width: float = 7.0, height: float = 4.2, ncols: int = 1, nrows: int = 1) -> Any:
    # the object-oriented API: no pyplot global state, no GUI backend, safe in worker threads
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=nrows == 1 and ncols == 1)
    return fig, axes


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def interval_words(rows: pd.DataFrame, metrics: Sequence[str]) -> str:
    """What the error bars of ``metrics`` on ``rows`` (leaderboard rows) are, in words."""
    sources = {str(r.get(f"{m}_ci_source") or "") for _, r in rows.iterrows() for m in metrics}
    over = [w for s, w in ((SEEDS, "over seeds"), (PROMPTS, "over eval prompts (one seed)")) if s in sources]
    if not over:
        return "no interval (one seed, no per-prompt error recorded)"
    text = "95% CI " + ", or ".join(over)
    return text + ("; some without interval" if "" in sources else "")


def method_colors(methods: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(sorted(set(methods)))}


def pareto_front(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points not dominated by one with lower (or equal) ``x`` and higher ``y``: the reward-vs-KL frontier."""
    order = np.lexsort((-y, x))
    xs, ys, best = [], [], -np.inf
    for i in order:
        if y[i] > best:
            xs.append(x[i])
            ys.append(y[i])
            best = y[i]
    return np.array(xs), np.array(ys)


def frontier_plot(df: pd.DataFrame, board: pd.DataFrame, colors: dict[str, Any]) -> Plot | None:
    """Gold reward against KL for every completed run, each method's Pareto front, and its best
    configuration as a star with the leaderboard's intervals (the title says which they are)."""
    done = df[df["status"] == "completed"]
    x, y = numeric(done, "kl_mean"), numeric(done, "gold_reward_mean")
    ok = done[x.notna() & y.notna()]
    if ok.empty:
        return None
    fig, ax = new_figure()
    for method, g in ok.groupby("arm", sort=True):
        gx, gy = numeric(g, "kl_mean").to_numpy(), numeric(g, "gold_reward_mean").to_numpy()
        c = colors.get(str(method))
        ax.scatter(gx, gy, s=22, alpha=0.55, color=c, label=f"{method} ({len(g)} runs)")
        fx, fy = pareto_front(gx, gy)
        if len(fx) > 1:
            ax.plot(fx, fy, color=c, lw=1.2, alpha=0.9)
    starred = board[numeric(board, "kl_mean").notna() & numeric(board, "gold_reward_mean").notna()]
    for _, r in starred.iterrows():
        ax.errorbar(r["kl_mean"], r["gold_reward_mean"],
                    xerr=None if isnan(r.get("kl_mean_ci95")) else r["kl_mean_ci95"],
                    yerr=None if isnan(r.get("gold_reward_mean_ci95")) else r["gold_reward_mean_ci95"],
                    fmt="*", ms=13, mec="black", mew=0.7, color=colors.get(str(r["arm"])), capsize=3)
    bars = interval_words(starred, ("kl_mean", "gold_reward_mean"))
    ax.set_xlabel("KL(policy ‖ reference), mean over eval prompts")
    ax.set_ylabel("gold reward, mean over eval prompts")
    ax.set_title(f"Reward vs KL (stars: best configuration, {bars})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    caption = (f"Reward vs KL frontier: dots are completed runs, lines each method's Pareto front, stars each "
               f"method's best configuration (mean over its seeds) with error bars: {bars}.")
    return Plot("frontier", caption, png_bytes(fig),
                "scatter of gold reward against KL to the reference, one colour per method", fig)


def winrate_plot(board: pd.DataFrame, colors: dict[str, Any]) -> Plot | None:
    """Win rates (LC and raw) of each method's best configuration against the baseline, with the
    leaderboard's intervals; the objective instead when no judge ran."""
    cols = [c for c in ("length_controlled_winrate", "win_rate") if c in board.columns
            and numeric(board, c).notna().any()]
    named = sorted({str(b) for b in board.get("baseline", pd.Series(dtype=object)).dropna() if str(b)})
    against = f"baseline {named[0]}" if len(named) == 1 else "each row's baseline" if named \
        else "the baseline (not recorded)"
    value_label = f"win rate vs {'baseline' if len(named) == 1 else against} (%)"
    baseline_at: float | None = 50.0  # a candidate as good as the baseline wins half its pairs
    if not cols:  # no judge ran: compare the objective instead
        cols = [c for c in DEFAULT_OBJECTIVES if c in board.columns and numeric(board, c).notna().any()][:1]
        value_label, baseline_at = (label(cols[0]), None) if cols else ("", None)
    rows = board[numeric(board, cols[0]).notna()] if cols else board.iloc[0:0]
    if rows.empty:
        return None
    labels = [row_label(r, board) for _, r in rows.iterrows()]
    fig, ax = new_figure(max(5.0, 1.2 * len(rows) + 2), 4.2)
    width = 0.8 / len(cols)
    xs = np.arange(len(rows))
    for j, c in enumerate(cols):
        vals = numeric(rows, c).to_numpy()
        err = numeric(rows, f"{c}_ci95").fillna(0).to_numpy()
        bar_colors = [colors.get(str(m)) for m in rows["arm"]]
        ax.bar(xs + (j - (len(cols) - 1) / 2) * width, vals, width * 0.95, yerr=err, capsize=4,
               color=bar_colors, alpha=1.0 if j == 0 else 0.5, edgecolor="black", lw=0.5, label=label(c))
    if baseline_at is not None:
        ax.axhline(baseline_at, color="grey", ls="--", lw=1)
    ax.set_xticks(xs, labels, rotation=20 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center")
    ax.set_ylabel(value_label)
    bars = interval_words(rows, cols)
    what = f"vs {against}" if baseline_at is not None else value_label
    ax.set_title(f"Best configuration per method, {what}\n(error bars: {bars})", fontsize=10)
    if len(cols) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    caption = (f"Win rate of each method's best configuration against {against} (dashed: 50%, as good as "
               f"the baseline); error bars: {bars}." if baseline_at is not None else
               f"{value_label} of each method's best configuration (no judge ran); error bars: {bars}.")
    return Plot("winrate", caption, png_bytes(fig), "bar chart of win rates per method with error bars", fig)


def curves_plot(df: pd.DataFrame, board: pd.DataFrame, colors: dict[str, Any]) -> Plot | None:
    """Training (solid) and held-out (dashed) loss against step of each method's best configuration,
    every seed: one panel per method with its own y axis, since objectives differ in scale
    (IPO's squared loss sits near 200 where DPO's starts at 0.69) and are not comparable."""
    series: dict[str, list[list[dict[str, Any]]]] = {}
    for _, r in board.iterrows():
        for name in filter(None, str(r.get("runs") or "").split(", ")):
            match = df[df["relpath"] == name]
            if not match.empty:
                rows = read_jsonl(Path(match["path"].iloc[0]) / "metrics.jsonl")
                if any(isinstance(row.get("loss"), (int, float)) for row in rows):
                    series.setdefault(str(r["arm"]), []).append(rows)
    if not series:
        return None
    from matplotlib.ticker import MaxNLocator

    n = len(series)
    ncols = min(3, n)
    nrows = -(-n // ncols)
    fig, axes = new_figure(max(6.5, 3.7 * ncols), 2.7 * nrows + 0.6, ncols, nrows)
    flat = list(np.asarray(axes).ravel())
    has_eval = False
    for ax, (method, runs) in zip(flat, series.items()):
        c = colors.get(method)
        for rows in runs:
            for key, style in (("loss", "-"), ("eval/loss", "--")):
                pts = [(row["step"], row[key]) for row in rows
                       if isinstance(row.get(key), (int, float)) and isinstance(row.get("step"), (int, float))]
                if pts:
                    has_eval |= key == "eval/loss"
                    s, v = zip(*pts)
                    ax.plot(s, v, color=c, ls=style, lw=1.1, alpha=0.8, marker="o" if len(pts) < 6 else None, ms=3)
        ax.set_title(f"{method} ({len(runs)} seed{'s' if len(runs) != 1 else ''})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax in flat[:n]:
        ax.set_xlabel("optimizer step", fontsize=8)
    for i in range(0, n, ncols):
        flat[i].set_ylabel("loss (own objective)", fontsize=8)
    lines = "solid: training loss" + (", dashed: held-out loss" if has_eval else "")
    fig.suptitle(f"Loss of each method's best configuration, one line per seed\n({lines}; "
                 "each panel has its own y scale)", fontsize=10)
    caption = (f"Training curves: one panel per method, one line per seed of its best configuration ({lines}). "
               "Each panel has its own y axis: each method minimises its own objective, so loss values are "
               "not comparable across methods.")
    return Plot("curves", caption, png_bytes(fig), "loss against optimizer step, one panel per method", fig)
