"""Pipelines: methods whose rounds are stages (generate, build data, score, train), each a run, resumable."""
