"""The TensorRT backend: an export folder's graphs run as TensorRT engines on CUDA.

One backend for both flavours (``trt_flavours.py``): engines come from the cache
(``trt_engines.py``, built on first use where none fits), one optimization profile per graph
(``shape_plan.profile_shapes``: the documented task envelope; a call outside it is a
``SoatError`` naming the graph, the shape and the profile), and execution by tensor address:
``set_input_shape``/``set_tensor_address`` and ``execute_async_v3`` on torch's current stream.
"""

from __future__ import annotations

import os
import warnings

import torch

from ...errors import SoatError
from ..backend import NodeByNode
from ..capabilities import backend_spec
from ..config import GeneratorConfig
from ..graphs import graph_io, onnx_outputs
from ..manifest import Manifest
from ..shape_plan import MAX_BATCH, check_in_profile
from .trt_engines import ENGINE_DIR, ensure_engine, find_engine
from .trt_flavours import make_logger, select_flavour

class TensorRTBackend(NodeByNode):
    """Runs an export folder's graphs as TensorRT engines (CUDA only).

    Args:
        manifest: the verified export folder (its dtype is the engines' precision).
        device: a CUDA device.
        dtype: the export's dtype (fp32, TF32 off; or fp16).
        engine_dir: the engine cache folder (default ``<export>/engines``).
        max_batch: the chain engines' largest batch (default: that of any cached engine that
            fits, as ``soat engines --max-batch`` built it, else 16); bigger batches run in chunks.
        flavour: ``trt``, ``rtx`` or None (``select_flavour``).
    """

    name = "tensorrt"
    differentiable, capturable = backend_spec(name).differentiable, backend_spec(name).capturable

    def __init__(self, manifest: Manifest, device: torch.device, dtype: torch.dtype, engine_dir: str | None = None,
                 max_batch: int | None = None, flavour: str | None = None):
        self.flavour = select_flavour(flavour)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise SoatError(f"backend='tensorrt' runs on CUDA only; got device={str(device)!r}")
        self.flavour.check_device(self.device)
        self.manifest = manifest
        self.config: GeneratorConfig = manifest.config
        self.dtype = dtype
        self.engine_dir = engine_dir or os.path.join(manifest.folder, ENGINE_DIR)
        self.max_batch = max_batch
        self._engines: dict = {}

    def run(self, graph_id: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names, outputs = graph_io(self.config, graph_id)
        engine = self._engine(graph_id)
        batch = inputs[names[0]].shape[0]
        # the noise may be [1, 1, H, W]: every engine input gets the full batch
        tensors = {n: inputs[n].detach().to(self.device, self.dtype).expand(batch, *inputs[n].shape[1:])
                   for n in names}
        limit = engine["profile"][names[0]][2][0]
        for i in range(0, batch, limit):  # every chunk's shapes checked before anything runs
            check_in_profile(graph_id, {n: (min(limit, batch - i), *t.shape[1:]) for n, t in tensors.items()},
                             engine["profile"])
        chunks = [self._execute(engine, graph_id, {n: t[i:i + limit].contiguous() for n, t in tensors.items()})
                  for i in range(0, batch, limit)]
        return {outputs[0]: chunks[0] if len(chunks) == 1 else torch.cat(chunks)}

    def _execute(self, engine: dict, graph_id: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        context = engine["context"]
        for name, t in inputs.items():
            if not context.set_input_shape(name, tuple(t.shape)) or not context.set_tensor_address(name, t.data_ptr()):
                raise SoatError(f"TensorRT refused input {name!r} {list(t.shape)} of graph {graph_id!r}")
        out_name = onnx_outputs(self.config, graph_id)[0]
        out = torch.empty(tuple(context.get_tensor_shape(out_name)), device=self.device, dtype=self.dtype)
        context.set_tensor_address(out_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise SoatError(f"TensorRT failed to run graph {graph_id!r}")
        if not engine["cache_saved"]:  # the first run compiled this graph's kernels (RTX): keep them
            stream.synchronize()
            self.flavour.save_runtime_cache(engine["keep"], engine["runtime_cache"])
            engine["cache_saved"] = True
        return out

    def _engine(self, graph_id: str) -> dict:
        """The graph's engine, context and profile: from the cache, else built for this GPU now."""
        if graph_id not in self._engines:
            if graph_id not in self.manifest.graphs:
                raise SoatError(f"graph {graph_id!r} is not in export {self.manifest.folder!r}")
            with torch.cuda.device(self.device):
                self._engines[graph_id] = self._load(graph_id)
        return self._engines[graph_id]

    def _load(self, graph_id: str) -> dict:
        f = self.flavour
        wanted = {"graph_sha256": self.manifest.graph_sha256(graph_id), "flavour": f.name, "tensorrt": f.version,
                  "precision": self.manifest.dtype}
        if self.max_batch is not None:
            wanted["max_batch"] = self.max_batch
        logger = make_logger(f.trt)
        runtime = f.trt.Runtime(logger)
        refused: list[str] = []
        excluded: list[str] = []
        while True:
            found, why = find_engine(self.engine_dir, graph_id, wanted,
                                     lambda r: isinstance(r.get("target"), str) and f.covers(r["target"], self.device),
                                     excluded)
            refused += why
            if found is None:
                break
            engine_path, record = found
            with open(engine_path, "rb") as fh:
                plan = fh.read()
            reason = f.invalid_reason(runtime, plan)
            if reason is None:
                break
            refused.append(f"{os.path.basename(engine_path)}: {reason}")
            excluded.append(engine_path)
        if found is None:
            if refused:
                warnings.warn(f"building the TensorRT engine of {graph_id!r} for this GPU; cached engines were "
                              f"refused: {'; '.join(refused)}", stacklevel=4)
            targets = f.targets(self.manifest.dtype, None, self.device)
            engine_path, record, _ = ensure_engine(f, self.manifest, graph_id, self.engine_dir, targets,
                                                   self.max_batch or MAX_BATCH, force=bool(excluded))
            with open(engine_path, "rb") as fh:
                plan = fh.read()
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise SoatError(f"TensorRT could not load the engine of {graph_id!r} ({engine_path}): "
                            f"{'; '.join(logger.errors) or 'no error logged'}; delete it to rebuild")
        cache_path = engine_path[:-len(".engine")] + ".runtime-cache"
        context, keep = f.context(engine, cache_path)
        profile = {name: tuple(tuple(s) for s in shapes) for name, shapes in record["profile"].items()}
        # the engine (and runtime) stay referenced: a context must not outlive its engine
        return {"context": context, "engine": engine, "runtime": runtime, "keep": keep, "profile": profile,
                "runtime_cache": cache_path, "cache_saved": f.name != "rtx"}
