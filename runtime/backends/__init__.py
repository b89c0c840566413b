"""Executors of the layer chain. Each has ``run(node_id, inputs) -> outputs``."""
