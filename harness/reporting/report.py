"""Leaderboards and the sweep report (Markdown + a self-contained HTML page), built from the results table.

This module is the stable entry point; the work is split by concern: ``leaderboard`` (best
configuration per method, intervals, ranking), ``tables`` (display cells), ``plots``
(matplotlib figures), ``studies`` (Optuna history and importances), ``render`` (sections,
templates, files) and ``templates`` (where ``reports/templates/`` is found).

    harness report runs/quickstart             # -> runs/quickstart/report/index.html (path printed)
    harness leaderboard runs/ --model toy      # one table across every sweep and run
    python -c "from harness.reporting.report import write_report; print(write_report('runs/quickstart'))"

Everything comes from :func:`harness.reporting.results.results_table` (one row per run or trial),
plus each best trial's ``metrics.jsonl`` for training curves and the Optuna study when the
runs name its storage (``sweep_storage`` / ``study_name``).  The report has:

- a leaderboard: per method, its best configuration by the sweep's objective (the runs'
  ``sweep_objective``; else ``length_controlled_winrate`` when measured, else
  ``gold_reward_mean``) and every metric as mean ± 95% CI: over seeds (Student t) where the
  configuration has several, else over the eval prompts from the standard error the evaluation
  recorded (marked †); the baseline the win rates were judged against is named;
- per-group means (``gold_reward_by_group``) as a method x group table, when the world
  defines groups of eval prompts;
- trial status counts per method (completed / pruned / failed / running / interrupted) and
  the errors of failed trials;
- the reward-vs-KL frontier (the setting of Rafailov et al. 2023, DPO, arXiv:2305.18290,
  Figure 2: x = KL to the reference, y = gold reward), a win-rate bar chart with error bars,
  the best trials' training curves (one panel per method: objectives differ in scale),
  Optuna's optimisation history and hyperparameter importances per method (greyed when
  they rest on fewer than ``studies.MIN_IMPORTANCE_TRIALS`` trials);
- ablation curves (``ablation``): the objective against each parameter a sweep varies within an
  arm (FLAN's held-out score against the number of clusters or model size), one line per arm,
  the runs' starting model dashed, with a table of every point;
- cost (wall time, tokens/s, peak memory, trainable parameters, GPU-hours) and provenance
  (model, data, judge, package versions, git sha, hardware, dates).

The page and the Markdown file are rendered from the Jinja2 templates in ``reports/templates/``.
``index.html`` inlines its plots as base64 PNG and its CSS, and loads nothing else: it
can be mailed or attached as one file.  ``index.md`` shows the same content with the plots
saved next to it in ``plots/``.  Partial stores (running, failed, pruned trials; a missing
study) render with what exists and a note for what does not.
"""

from __future__ import annotations

from harness.reporting.intervals import mean_ci, t_quantile
from harness.reporting.leaderboard import choose_objective, leaderboard, metric_columns
from harness.reporting.plots import Plot, pareto_front
from harness.reporting.render import Section, build_sections, write_report
from harness.reporting.studies import load_study, optuna_plots
from harness.reporting.tables import Table, leaderboard_table

__all__ = ["Plot", "Section", "Table", "build_sections", "choose_objective", "leaderboard", "leaderboard_table",
           "load_study", "mean_ci", "metric_columns", "optuna_plots", "pareto_front", "t_quantile", "write_report"]
