"""Method adapters: one module per method; each registers itself with ``harness.methods_api.register_method``."""
