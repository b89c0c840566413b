"""The SOAT runtime: the layer chain and its graph contract, the backends that run it, sigma space,
the Generator and the editing tasks. The public API is re-exported by ``soat``.

Modules, spine first:

- **The chain and its contract:** ``capabilities`` (the tables of precisions and backends),
  ``config`` (``GeneratorConfig``: the few numbers of a layout),
  ``chain`` (the layer nodes, named as rosinality's state dict), ``graphs`` (every graph's id and
  named inputs/outputs and symbolic shapes, linked graphs included, and the run plan of every run of
  layers), ``backend`` (the ``Backend`` protocol and the plan's executor), ``manifest`` (an export
  folder's ``manifest.json``, its checks and its verified bytes), ``shape_plan``
  (which shapes each task passes to each graph; the TensorRT profiles).
- **The arithmetic:** ``layers`` (the reference fp32 layer math), ``weights`` (parameter containers
  named as the checkpoint keys), ``graph_modules`` (one module per graph in the shared-weight form,
  what the exporters trace) and ``fused_graph_modules`` (the same with the fast path's Triton
  kernels, what the CUDA AOTInductor export compiles).
- **Where weights come from:** ``sources`` (one entry that reads ``random[:SEED]``, checkpoints,
  NVIDIA pickles and safetensors into the weights), ``checkpoint``, ``nvidia``,
  ``safetensors_format``, ``random_model`` and ``registry`` (real checkpoints by name or URL);
  ``filelock`` (the locks that let processes share the caches and export folders).
- **Sigma space and the Generator:** ``styles`` (sigma as a list or one flat vector), ``noise``
  (fixed, random or explicit per-layer noise), ``generator`` (the ``Generator``: sigma space and
  every task as a method), ``inversion`` and ``codes`` (GAN inversion and its codes on disk),
  ``images`` (tensors to uint8, PIL and PNG).
- **CUDA graphs:** ``cudagraph`` (capture and replay of one schedule per input signature) and
  ``cuda_graph_tasks`` (every task call of a CUDA generator replayed from such graphs by default, and
  the batch policy: padded sizes, warm-up largest first); ``lru`` (the one least-recently-used cache).
- ``backends/``: one class each: torch (the reference), fast (shared-weight convs and fused
  Triton layer kernels), onnxruntime (with ONNX Runtime's own CUDA graphs), tensorrt (two
  flavours and the engine cache) and aoti (AOTInductor packages).
- ``tasks/``: each task a short schedule over the chain (blend and merge, the panorama and its
  geometry, the endless panorama with its sampler and caches, expand, local blends and patch
  swap, shift, translation); ``endless`` is the endless panorama's one public face, the only way the
  server and the benchmarks reach it.

``soat.load`` (``soat/loader.py``), which picks a source and a backend and builds the Generator, sits
above the runtime and the exporter (the runtime imports neither); the behaviour every module reproduces is docs/contract.md.
"""
