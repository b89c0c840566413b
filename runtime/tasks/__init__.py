"""Tasks: each a short schedule over the layer chain (SPEC §2), run through ``Generator.run_node``
and ``Generator.run_chain``."""
