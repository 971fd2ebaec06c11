"""Optuna sweeps: the sweep spec, study storage, workers and trial processes."""
