"""The SOAT runtime: the layer chain and its graph contract, the backends, sigma space and the editing tasks.

Modules, spine first: ``config`` and ``chain`` (the layer nodes), ``graphs`` (each graph's
named inputs/outputs), ``backend`` (the ``Backend`` protocol), ``backends/`` (torch, fast,
onnxruntime, tensorrt), ``generator`` (sigma space and the task methods; its CUDA graphs in
``cuda_graph_tasks``), ``tasks/`` (each task a short schedule over the chain), ``endless`` (the
endless panorama's face for the server and the benchmarks, which import no ``tasks/`` module),
``load`` (``soat.load``). The public API is re-exported by ``soat``.
"""
