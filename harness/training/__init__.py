"""Training: the one loop every method runs on, the reference-log-prob cache and the runner of a whole run."""
