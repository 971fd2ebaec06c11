"""Reports: the results table over a run store, leaderboards, plots and the Markdown/HTML report."""
