"""Models as the harness uses them: loading, PEFT adapters, per-sequence log-probs and generation."""
