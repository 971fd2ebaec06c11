"""Where results and cached artefacts live: the run store, content-addressed caches and trackers (W&B)."""
