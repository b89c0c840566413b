"""Tasks: each a short schedule over the layer chain (docs/contract.md#tasks), run through
``Generator.run_node`` and ``Generator.run_chain``."""
