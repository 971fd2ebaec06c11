"""Method adapters: one module per method; each registers itself with ``harness.core.contract.register_method``."""
