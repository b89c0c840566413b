"""Export: a generator's graphs as files another runtime loads, with the manifest that describes them.

    soat.export.export("ckpt.pt", "ckpt-onnx")              # or `soat export --checkpoint ckpt.pt -o ckpt-onnx`
    G = soat.load("ckpt-onnx", backend="onnxruntime")       # every task runs unchanged

Modules:

- ``onnx_export``: ``export``, one ONNX graph per graph of ``soat.runtime.graphs`` (the modules of
  ``soat.runtime.graph_modules``, traced);
- ``aoti_export``: ``soat export --format aoti``, one AOTInductor package per graph and per styled
  conv's linked graph (the plain modules on the CPU, the fused form of
  ``soat.runtime.fused_graph_modules`` on CUDA);
- ``folder``: what both write besides their graphs (the fixed noise, the mean styles and, last,
  ``manifest.json``, which ``soat.runtime.manifest`` reads), and the atomic folder swap;
- ``cache``: checkpoints exported once into the cache, for ``soat.load(..., backend="onnxruntime")``;
- ``engines``: ``soat engines``, TensorRT engines built ahead of time into an export folder;
- ``cli``: ``soat export``.

The backends that run exports (onnxruntime, tensorrt, aoti) live in ``soat.runtime.backends``;
libsoat (``cpp/``) runs AOTInductor exports from C++.
"""

from .onnx_export import export

__all__ = ["export"]
