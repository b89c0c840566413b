"""Export: per-layer ONNX graphs with feature I/O, and the manifest.

    soat.export.export("ckpt.pt", "ckpt-onnx")              # or `soat export ckpt.pt -o ckpt-onnx`
    G = soat.load("ckpt-onnx", backend="onnxruntime")       # every task runs unchanged

Modules: ``onnx_export`` (the exporter: it traces ``soat.runtime.graph_modules`` against
the graph contract of ``soat.runtime.graphs`` and writes ``soat.runtime.manifest``),
``cache`` (checkpoints exported once into the cache for ``soat.load(..., backend="onnxruntime")``)
and ``cli``. The backends that run exports live in ``soat.runtime.backends``.
"""

from .onnx_export import export

__all__ = ["export"]
