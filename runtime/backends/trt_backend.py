"""The TensorRT backend: engines built from an export folder's ONNX graphs, cached on disk.

Written against TensorRT's documented Python API (8.6 / 10.x): ``trt.Builder``,
``OnnxParser``, one optimization profile per graph, ``build_serialized_network``;
execution by tensor address (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3`` on torch's current stream). TensorRT cannot be installed on the
machines this project is tested on, so only the pure-Python parts (profiles, the
engine-cache key and its checks) run in CI; the engine path is untested here.

Engine cache: ``<engine_dir>/<graph id>.<key>.engine`` with a JSON record beside it.
The key hashes everything an engine depends on (graph sha256, TensorRT version, GPU
name, precision, profile). An engine is loaded only when its record matches the
expected one field by field and the engine file matches the recorded sha256;
otherwise it is rebuilt (with a warning naming the mismatch), never loaded blindly.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings

import torch

from ...errors import SoatError
from ..backend import NodeByNode
from ..checkpoint import file_sha256
from ..config import GeneratorConfig
from ..graphs import MAPPING, STYLES, Shape, graph_io, input_shapes, onnx_outputs
from ..manifest import Manifest

MAX_BATCH = 16  # chain engines; larger batches run in chunks
LATENT_MAX_BATCH = 4096  # mapping/styles engines: Generator.estimate_mean_styles maps z 4096 at a time
RECORD_FIELDS = ("graph_sha256", "tensorrt", "gpu", "precision", "profile")

Profile = dict[str, tuple[Shape, Shape, Shape]]


def profile_shapes(config: GeneratorConfig, graph_id: str, max_batch: int = MAX_BATCH) -> Profile:
    """``{input: (min, opt, max)}``: batch 1 to ``max_batch``, each map 1x to 2x its native H and W.

    The tasks widen maps at most twofold (merge and panorama spans double W, expand
    doubles W or H); the optimum is batch 1 at the native size. The noise is given the
    full batch by ``run``.
    """
    if graph_id in (MAPPING, STYLES):
        max_batch = max(max_batch, LATENT_MAX_BATCH)
    profile = {}
    for name, lo in input_shapes(config, graph_id).items():
        hi = (max_batch, *lo[1:]) if len(lo) < 4 else (max_batch, lo[1], 2 * lo[2], 2 * lo[3])
        profile[name] = (lo, lo, hi)
    return profile


def engine_record(graph_sha256: str, tensorrt_version: str, gpu: str, precision: str, profile: Profile) -> dict:
    """What an engine depends on, plus ``key``: the sha256 of those fields."""
    record = {"graph_sha256": graph_sha256, "tensorrt": tensorrt_version, "gpu": gpu, "precision": precision,
              "profile": {name: [list(s) for s in shapes] for name, shapes in sorted(profile.items())}}
    record["key"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def engine_paths(engine_dir: str, graph_id: str, record: dict) -> tuple[str, str]:
    """``(engine file, record file)`` for a graph and its expected record."""
    stem = os.path.join(engine_dir, f"{graph_id}.{record['key'][:16]}")
    return stem + ".engine", stem + ".json"


def stale_reason(engine_path: str, record_path: str, expected: dict) -> str | None:
    """Why the cached engine may not be loaded (None: it matches ``expected`` and is intact)."""
    if not os.path.isfile(engine_path):
        return "no cached engine"
    if not os.path.isfile(record_path):
        return f"{os.path.basename(engine_path)} has no record beside it"
    try:
        with open(record_path) as f:
            found = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return f"its record is unreadable ({e})"
    if not isinstance(found, dict):
        return "its record is not a JSON object"
    diffs = [f"{k}: cached {found.get(k)!r} != expected {expected[k]!r}"
             for k in (*RECORD_FIELDS, "key") if found.get(k) != expected[k]]
    if diffs:
        return "it was built for something else (" + "; ".join(diffs) + ")"
    if found.get("engine_sha256") != file_sha256(engine_path):
        return "the engine file does not match the sha256 in its record"
    return None


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise SoatError("backend='tensorrt' needs NVIDIA TensorRT, which is not installed here "
                        "(pip install tensorrt on a CUDA machine); use backend='onnxruntime' or 'torch'") from None
    return tensorrt


class TensorRTBackend(NodeByNode):
    """Runs an export folder's graphs as TensorRT engines (CUDA only).

    Args:
        manifest: the verified export folder (its dtype is the engines' precision).
        device: a CUDA device.
        dtype: fp32 (TF32 off, to stay faithful) or fp16.
        engine_dir: the engine cache folder.
        max_batch: the chain engines' largest batch; bigger batches run in chunks.
    """

    name = "tensorrt"
    differentiable = False
    capturable = False

    def __init__(self, manifest: Manifest, device: torch.device, dtype: torch.dtype, engine_dir: str,
                 max_batch: int = MAX_BATCH):
        self.trt = import_tensorrt()
        if torch.device(device).type != "cuda":
            raise SoatError(f"backend='tensorrt' runs on CUDA only; got device={str(device)!r}")
        self.manifest = manifest
        self.config = manifest.config
        self.device = torch.device(device)
        self.dtype = dtype
        self.engine_dir = engine_dir
        self.max_batch = max_batch
        self.precision = "fp16" if dtype == torch.float16 else "fp32"
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._contexts: dict = {}

    def run(self, graph_id: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names, outputs = graph_io(self.config, graph_id)
        context, limit = self._context(graph_id)
        batch = inputs[names[0]].shape[0]
        # the noise may be [1, 1, H, W]: give every engine input the full batch
        tensors = {n: inputs[n].detach().to(self.device, self.dtype).expand(batch, *inputs[n].shape[1:])
                   for n in names}
        chunks = [self._execute(context, graph_id, {n: t[i:i + limit].contiguous() for n, t in tensors.items()})
                  for i in range(0, batch, limit)]
        return {outputs[0]: chunks[0] if len(chunks) == 1 else torch.cat(chunks)}

    def _execute(self, context, graph_id: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        for name, t in inputs.items():
            context.set_input_shape(name, tuple(t.shape))
            context.set_tensor_address(name, t.data_ptr())
        out_name = onnx_outputs(self.config, graph_id)[0]
        out = torch.empty(tuple(context.get_tensor_shape(out_name)), device=self.device, dtype=self.dtype)
        context.set_tensor_address(out_name, out.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT failed to run graph {graph_id!r}")
        return out

    def _context(self, graph_id: str):
        """``(execution context, largest batch)`` of a graph, from the engine cache or built now."""
        if graph_id not in self._contexts:
            profile = profile_shapes(self.config, graph_id, self.max_batch)
            expected = engine_record(self.manifest.graph_sha256(graph_id), self.trt.__version__,
                                     torch.cuda.get_device_name(self.device), self.precision, profile)
            engine_path, record_path = engine_paths(self.engine_dir, graph_id, expected)
            reason = stale_reason(engine_path, record_path, expected)
            if reason is None:
                with open(engine_path, "rb") as f:
                    plan = f.read()
            else:
                if reason != "no cached engine":
                    warnings.warn(f"rebuilding the TensorRT engine of {graph_id!r}: {reason}", stacklevel=2)
                plan = self._build(graph_id, profile)
                _write_engine(engine_path, record_path, plan, expected)
            engine = self.trt.Runtime(self.logger).deserialize_cuda_engine(plan)
            if engine is None:
                raise SoatError(f"TensorRT could not load the engine of {graph_id!r} ({engine_path}); delete it")
            limit = next(iter(profile.values()))[2][0]
            # the engine is kept alongside: a context must not outlive its engine
            self._contexts[graph_id] = (engine.create_execution_context(), limit, engine)
        context, limit, _ = self._contexts[graph_id]
        return context, limit

    def _build(self, graph_id: str, profile: Profile) -> bytes:
        """Parse the ONNX graph and build a serialized engine for ``profile``."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        explicit = 0 if int(trt.__version__.split(".")[0]) >= 10 else \
            1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # implicit in TensorRT 10
        network = builder.create_network(explicit)
        parser = trt.OnnxParser(network, self.logger)
        with open(self.manifest.graph_path(graph_id), "rb") as f:
            if not parser.parse(f.read()):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise SoatError(f"TensorRT's ONNX parser rejected graph {graph_id!r}: {errors}")
        config = builder.create_builder_config()
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 engines stay fp32 (TF32 would cost ~1e-3)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        opt = builder.create_optimization_profile()
        for name, (lo, mid, hi) in profile.items():
            opt.set_shape(name, lo, mid, hi)
        config.add_optimization_profile(opt)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise SoatError(f"TensorRT could not build an engine for graph {graph_id!r} (see its log above)")
        return bytes(plan)


def _write_engine(engine_path: str, record_path: str, plan: bytes, record: dict) -> None:
    """Engine first, then its record (with the engine's sha256): a record always vouches for a whole file."""
    os.makedirs(os.path.dirname(engine_path), exist_ok=True)
    with open(engine_path + ".tmp", "wb") as f:
        f.write(plan)
    os.replace(engine_path + ".tmp", engine_path)
    full = dict(record, engine_sha256=hashlib.sha256(plan).hexdigest())
    with open(record_path + ".tmp", "w") as f:
        json.dump(full, f, indent=1)
    os.replace(record_path + ".tmp", record_path)
