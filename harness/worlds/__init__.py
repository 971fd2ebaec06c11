"""Built-in benchmarks ("worlds"): splits, gold scorers, lm-eval tasks and base models behind one contract."""
