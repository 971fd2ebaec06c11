"""align-harness: benchmark harness for LLM training and alignment methods."""

__version__ = "0.1.0"
