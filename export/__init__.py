"""Export: per-layer ONNX graphs with feature I/O, and the backends that run them.

    soat.export.export("ckpt.pt", "ckpt-onnx")              # or `soat export ckpt.pt -o ckpt-onnx`
    G = soat.load("ckpt-onnx", backend="onnxruntime")       # every task runs unchanged

Modules: ``onnx_export`` (the exporter), ``modules`` (the graph modules), ``graphs``
(graph names, axes and shapes), ``manifest`` (the folder's manifest and its checks),
``backends`` (``load_exported`` and the export cache), ``ort_backend``,
``trt_backend``, ``cli``.
"""

from .onnx_export import export

__all__ = ["export"]
