"""The report's figures (matplotlib, object-oriented API: no pyplot state, no GUI backend): the
reward-vs-KL frontier, win rates per method, training curves.

    harness report runs/quickstart       # embeds them in index.html, saves them in report/plots/

Each function returns a :class:`Plot` (PNG bytes and a caption saying what is drawn) or None
when the results hold nothing to draw.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.reporting.intervals import isnan
from harness.reporting.leaderboard import DEFAULT_OBJECTIVES, label, numeric, row_label
from harness.store.runs import read_jsonl


@dataclass
class Plot:
    name: str
    title: str
    png: bytes
    alt: str


def new_figure(width: float = 7.0, height: float = 4.2, ncols: int = 1) -> Any:
    # the object-oriented API: no pyplot global state, no GUI backend, safe in worker threads
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


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
    for _, r in board.iterrows():
        if not isnan(r.get("kl_mean")) and not isnan(r.get("gold_reward_mean")):
            ax.errorbar(r["kl_mean"], r["gold_reward_mean"],
                        xerr=0 if isnan(r.get("kl_mean_ci95")) else r["kl_mean_ci95"],
                        yerr=0 if isnan(r.get("gold_reward_mean_ci95")) else r["gold_reward_mean_ci95"],
                        fmt="*", ms=13, mec="black", mew=0.7, color=colors.get(str(r["arm"])), capsize=3)
    ax.set_xlabel("KL(policy ‖ reference), mean over eval prompts")
    ax.set_ylabel("gold reward, mean over eval prompts")
    ax.set_title("Reward vs KL frontier (stars: best configuration, 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return Plot("frontier", "Reward vs KL frontier", png_bytes(fig),
                "scatter of gold reward against KL to the reference, one colour per method")


def winrate_plot(board: pd.DataFrame, colors: dict[str, Any]) -> Plot | None:
    cols = [c for c in ("length_controlled_winrate", "win_rate") if c in board.columns
            and numeric(board, c).notna().any()]
    value_label = "win rate vs baseline (%)"
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
    ax.set_title("Best configuration per method (error bars: 95% CI)")
    if len(cols) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return Plot("winrate", "Win rate", png_bytes(fig), "bar chart of win rates per method with error bars")


def curves_plot(df: pd.DataFrame, board: pd.DataFrame, colors: dict[str, Any]) -> Plot | None:
    series: list[tuple[str, str, list[dict[str, Any]]]] = []
    for _, r in board.iterrows():
        for name in filter(None, str(r.get("runs") or "").split(", ")):
            match = df[df["relpath"] == name]
            if not match.empty:
                series.append((str(r["arm"]), name, read_jsonl(Path(match["path"].iloc[0]) / "metrics.jsonl")))
    has_eval = any("eval/loss" in row for _, _, rows in series for row in rows)
    if not any(any("loss" in row for row in rows) for _, _, rows in series):
        return None
    fig, axes = new_figure(11 if has_eval else 7, 4.0, 2 if has_eval else 1)
    axes = list(np.atleast_1d(axes))
    seen: set[str] = set()
    for method, _name, rows in series:
        c = colors.get(method)
        for ax, key in zip(axes, ("loss", "eval/loss")):
            pts = [(row["step"], row[key]) for row in rows
                   if isinstance(row.get(key), (int, float)) and isinstance(row.get("step"), (int, float))]
            if pts:
                s, v = zip(*pts)
                lab = method if (method not in seen and key == "loss") else None
                ax.plot(s, v, color=c, lw=1.1, alpha=0.8, label=lab, marker="o" if len(pts) < 6 else None, ms=3)
        seen.add(method)
    axes[0].set_title("training loss (best configuration, every seed)")
    if has_eval:
        axes[1].set_title("held-out loss")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (each method's own objective)")
    axes[0].legend(fontsize=8)
    return Plot("curves", "Training curves", png_bytes(fig), "training loss against step for each method's best trials")

