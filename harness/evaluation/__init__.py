"""Uniform evaluation: samples, gold / reward-model scores, KL, pairwise judges and win rates, lm-eval."""
