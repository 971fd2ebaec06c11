"""The method contract, its registry, the run spec and the pure losses: all that ``methods/`` may import."""
