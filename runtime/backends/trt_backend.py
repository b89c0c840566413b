"""The TensorRT backend: engines built from an export folder's ONNX graphs, cached on disk.

One backend, two flavours (``select_flavour``): data-center TensorRT (module ``tensorrt``)
when it imports, else TensorRT for RTX (module ``tensorrt_rtx_bindings``, pip packages
``tensorrt-rtx-cu13-bindings`` + ``tensorrt-rtx-cu13-libs``). Written once for both: parse
the ONNX graph, one optimization profile (``shape_plan.profile_shapes``: the documented task
envelope), ``build_serialized_network``, the cache below, ``deserialize_cuda_engine``,
``set_input_shape``/``set_tensor_address`` and ``execute_async_v3`` on torch's current
stream. The flavour differences are the methods of ``Flavour``:

- ``network_flags``: RTX networks are strongly typed (the precision is the ONNX graph's:
  an fp16 export gives an fp16 engine); TensorRT's are weakly typed with the FP16 builder
  flag for fp16 exports and TF32 off for fp32 ones.
- ``targets``/``configure``: RTX builds ahead of time for a list of compute capabilities
  (no GPU needed); TensorRT builds for the GPU it runs on.
- ``check_device``: RTX engines run on the compute capabilities its ``ComputeCapability``
  enum lists (7.5, 8.0, 8.6, 8.9, 12.0, 12.1 in 1.7), not on 9.0 (H100) nor below 7.5.
- ``invalid_reason``: RTX's ``Runtime.get_engine_validity`` before deserializing.
- ``context``: RTX execution contexts get a runtime cache (its JIT-compiled kernels),
  kept beside the engine and validated by TensorRT-RTX itself when read back.

Engine cache (``<export>/engines/`` by default): ``<graph id>.<key>.engine`` with a JSON
record beside it. The record holds what an engine depends on (graph sha256, flavour,
TensorRT version, target, precision, max batch, profile), its key (sha256 of those) and
the engine file's sha256. An engine is loaded only when its record matches field by
field, the engine file matches its sha256 (a truncated or swapped file does not) and, on
RTX, TensorRT-RTX calls it valid on this GPU; otherwise it is rebuilt with a warning
naming the reason (``soat engines --check`` refuses instead), never loaded blindly.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import warnings
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import torch

from ...errors import SoatError
from ..backend import NodeByNode
from ..checkpoint import file_sha256
from ..config import GeneratorConfig
from ..graphs import graph_io, onnx_outputs
from ..manifest import Manifest
from ..shape_plan import MAX_BATCH, Profile, check_in_profile, profile_shapes

ENGINE_DIR = "engines"  # under the export folder
RECORD_FIELDS = ("graph_sha256", "flavour", "tensorrt", "target", "precision", "max_batch", "profile")
FLAVOURS = ("trt", "rtx")
MODULES = {"trt": "tensorrt", "rtx": "tensorrt_rtx_bindings"}
RUNNING_BACKENDS = "backend='torch', 'fast' or 'onnxruntime'"


class Flavour(ABC):
    """What differs between TensorRT and TensorRT for RTX; everything else is shared."""

    name = ""

    def __init__(self, module):
        self.trt = module
        self.version = str(module.__version__)

    @abstractmethod
    def network_flags(self) -> int:
        """The ``create_network`` flags of this flavour."""

    @abstractmethod
    def targets(self, precision: str, requested: Sequence[str] | None, device: torch.device | None) -> list[str]:
        """The build targets (sorted ``smXY`` names) for ``requested`` capabilities (``"8.6"``) or the default."""

    @abstractmethod
    def configure(self, config, precision: str, targets: Sequence[str]) -> None:
        """Builder config settings of this flavour."""

    def covers(self, target: str, device: torch.device) -> bool:
        """Whether an engine built for record target ``target`` runs on ``device``."""
        return target == self.device_target(device)

    def device_target(self, device: torch.device) -> str:
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm{major}{minor} {torch.cuda.get_device_name(device)}"

    def check_device(self, device: torch.device) -> None:
        """A one-line ``SoatError`` when this flavour's engines cannot run on ``device``."""

    def invalid_reason(self, runtime, plan: bytes) -> str | None:
        """Why the flavour itself calls a serialized engine unusable here (None: no objection or no check)."""
        return None

    def context(self, engine, cache_path: str):
        """``(execution context, what must stay alive with it)``."""
        return engine.create_execution_context(), ()

    def save_runtime_cache(self, keep, cache_path: str) -> None:
        """Write the context's runtime cache (RTX) atomically; nothing for TensorRT."""


class TensorRTFlavour(Flavour):
    """Data-center TensorRT (``tensorrt``, 8.6 / 10.x): weakly typed, FP16 flag, built on and for this GPU."""

    name = "trt"

    def network_flags(self) -> int:
        if int(self.version.split(".")[0]) >= 10:
            return 0  # explicit batch is implicit in TensorRT 10
        return 1 << int(self.trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)

    def targets(self, precision: str, requested: Sequence[str] | None, device: torch.device | None) -> list[str]:
        if requested:
            raise SoatError("--compute-capability is for the rtx flavour; TensorRT builds for the GPU it runs on")
        if device is None or not torch.cuda.is_available():
            raise SoatError("the trt flavour (data-center TensorRT) builds engines on the GPU they will run on, and "
                            "there is no CUDA GPU here; use --flavour rtx to build ahead of time without a GPU")
        return [self.device_target(device)]

    def configure(self, config, precision: str, targets: Sequence[str]) -> None:
        config.clear_flag(self.trt.BuilderFlag.TF32)  # fp32 engines stay fp32 (TF32 would cost ~1e-3)
        if precision == "fp16":
            config.set_flag(self.trt.BuilderFlag.FP16)


class RtxFlavour(Flavour):
    """TensorRT for RTX (``tensorrt_rtx_bindings``): strongly typed, ahead-of-time for listed capabilities."""

    name = "rtx"

    def supported(self) -> list[tuple[int, int]]:
        """The compute capabilities the module can target, from its ``ComputeCapability`` enum (``SM86`` -> 8.6)."""
        members = [m for m in self.trt.ComputeCapability.__members__ if m.startswith("SM")]
        return sorted((int(m[2:-1]), int(m[-1])) for m in members)

    def network_flags(self) -> int:
        return 1 << int(self.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    def targets(self, precision: str, requested: Sequence[str] | None, device: torch.device | None) -> list[str]:
        supported = self.supported()
        if requested:
            ccs = sorted({_parse_cc(cc, supported) for cc in requested})
        elif device is not None:
            self.check_device(device)
            ccs = [torch.cuda.get_device_capability(device)]
        else:
            ccs = [cc for cc in supported if not (precision == "fp32" and cc < (8, 0))]
        if precision == "fp32" and any(cc < (8, 0) for cc in ccs):
            raise SoatError("fp32 engines cannot target compute capability 7.5: TensorRT for RTX compiles no fp32 "
                            "matrix products for Turing; export with --dtype fp16 for 7.5")
        return [f"sm{a}{b}" for a, b in ccs]

    def configure(self, config, precision: str, targets: Sequence[str]) -> None:
        config.num_compute_capabilities = len(targets)
        for i, target in enumerate(targets):
            if not config.set_compute_capability(getattr(self.trt.ComputeCapability, target.upper()), i):
                raise SoatError(f"TensorRT for RTX refused target {target}")

    def covers(self, target: str, device: torch.device) -> bool:
        major, minor = torch.cuda.get_device_capability(device)
        return f"sm{major}{minor}" in target.split(",")

    def check_device(self, device: torch.device) -> None:
        cc = torch.cuda.get_device_capability(device)
        supported = self.supported()
        if tuple(cc) not in supported:
            raise SoatError(unsupported_gpu_message(self.version, cc, torch.cuda.get_device_name(device), supported))

    def invalid_reason(self, runtime, plan: bytes) -> str | None:
        validity, diagnostics = runtime.get_engine_validity(plan)
        if validity != self.trt.EngineValidity.INVALID:
            return None
        flags = self.trt.EngineInvalidityDiagnostics
        names = [m for m, v in flags.__members__.items() if int(diagnostics) & int(v)]
        return f"TensorRT for RTX calls it invalid on this GPU ({', '.join(names) or 'no diagnostics'})"

    def context(self, engine, cache_path: str):
        config = engine.create_runtime_config()
        cache = config.create_runtime_cache()
        if os.path.isfile(cache_path):
            with open(cache_path, "rb") as f:
                cache.deserialize(f.read())  # checked by TensorRT-RTX against this GPU/driver; a mismatch is ignored
        config.set_runtime_cache(cache)
        return engine.create_execution_context(config), (config, cache)

    def save_runtime_cache(self, keep, cache_path: str) -> None:
        _write_atomic(cache_path, bytes(keep[1].serialize()))


def unsupported_gpu_message(version: str, cc: Sequence[int], gpu: str, supported: Sequence[tuple[int, int]]) -> str:
    """The one line that says TensorRT for RTX does not run on this GPU, and what does."""
    listed = ", ".join(f"{a}.{b}" for a, b in supported)
    return (f"TensorRT for RTX {version} does not run on {gpu} (compute capability {cc[0]}.{cc[1]}); its engines "
            f"run on compute capability {listed}. On this GPU use {RUNNING_BACKENDS}, or install data-center "
            "TensorRT (pip install tensorrt) for backend='tensorrt'")


def _parse_cc(text: str, supported: Sequence[tuple[int, int]]) -> tuple[int, int]:
    try:
        major, minor = (int(p) for p in str(text).split("."))
    except ValueError:
        raise SoatError(f"compute capability {text!r} must look like 8.6") from None
    if (major, minor) not in supported:
        raise SoatError(f"TensorRT for RTX cannot target compute capability {text}; it targets "
                        f"{', '.join(f'{a}.{b}' for a, b in supported)}")
    return major, minor


def select_flavour(flavour: str | None = None) -> Flavour:
    """``trt`` or ``rtx``; ``None``: TensorRT when ``tensorrt`` imports, else TensorRT for RTX."""
    if flavour is not None and flavour not in FLAVOURS:
        raise SoatError(f"flavour={flavour!r} is unknown; use 'trt' (TensorRT) or 'rtx' (TensorRT for RTX)")
    for name in ([flavour] if flavour else list(FLAVOURS)):
        try:
            module = __import__(MODULES[name])
        except ImportError:
            continue
        return (TensorRTFlavour if name == "trt" else RtxFlavour)(module)
    wanted = {"trt": "NVIDIA TensorRT (pip install tensorrt)",
              "rtx": "TensorRT for RTX (pip install 'soat[tensorrt-rtx]')"}
    what = wanted[flavour] if flavour else f"{wanted['trt']} or {wanted['rtx']}"
    raise SoatError(f"backend='tensorrt' needs {what}, which is not installed here; use backend='onnxruntime' "
                    "or 'torch'")


def make_logger(trt):
    """A TensorRT logger that keeps errors and warnings (errors go into the SoatError that follows)."""
    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
            elif int(severity) == int(trt.ILogger.Severity.WARNING):
                self.warnings.append(str(msg))
    return Logger()


# ---- the engine cache -----------------------------------------------------------------------------
def engine_record(graph_sha256: str, flavour: str, tensorrt: str, target: str, precision: str,
                  max_batch: int, profile: Profile) -> dict:
    """What an engine depends on (``tensorrt``: the module's version; ``target``: the flavour's build
    target), plus ``key``: the sha256 of those fields."""
    record = {"graph_sha256": graph_sha256, "flavour": flavour, "tensorrt": tensorrt, "target": target,
              "precision": precision, "max_batch": max_batch,
              "profile": {name: [list(s) for s in shapes] for name, shapes in sorted(profile.items())}}
    record["key"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def engine_paths(engine_dir: str, graph_id: str, record: dict) -> tuple[str, str]:
    """``(engine file, record file)`` for a graph and its record."""
    stem = os.path.join(engine_dir, f"{graph_id}.{record['key'][:16]}")
    return stem + ".engine", stem + ".json"


def read_record(record_path: str) -> dict | str:
    """The record at ``record_path``, or why it cannot be read."""
    try:
        with open(record_path) as f:
            found = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"its record is unreadable ({e})"
    return found if isinstance(found, dict) else "its record is not a JSON object"


def stale_reason(engine_path: str, record_path: str, expected: dict) -> str | None:
    """Why the cached engine may not be loaded (None: it matches ``expected`` and is intact)."""
    if not os.path.isfile(engine_path):
        return "no cached engine"
    if not os.path.isfile(record_path):
        return f"{os.path.basename(engine_path)} has no record beside it"
    found = read_record(record_path)
    if isinstance(found, str):
        return found
    diffs = [f"{k}: cached {found.get(k)!r} != expected {expected[k]!r}"
             for k in (*RECORD_FIELDS, "key") if found.get(k) != expected[k]]
    if diffs:
        return "it was built for something else (" + "; ".join(diffs) + ")"
    size = os.path.getsize(engine_path)
    if found.get("engine_bytes") != size:
        return f"the engine file has {size} bytes, its record says {found.get('engine_bytes')} (truncated or replaced)"
    if found.get("engine_sha256") != file_sha256(engine_path):
        return "the engine file does not match the sha256 in its record"
    return None


def find_engine(engine_dir: str, graph_id: str, wanted: dict, usable: Callable[[dict], bool],
                excluded: Sequence[str] = ()) -> tuple[tuple[str, dict] | None, list[str]]:
    """A cached engine of ``graph_id`` whose record has the ``wanted`` fields and passes ``usable``.

    Returns ``((engine path, record), [])`` or ``(None, reasons the candidates were refused)``.
    Every candidate is checked in full (``stale_reason`` against its own fields); engines in
    ``excluded`` (refused by the caller) are skipped.
    """
    refused = []
    for record_path in sorted(glob.glob(os.path.join(glob.escape(engine_dir), f"{glob.escape(graph_id)}.*.json"))):
        found = read_record(record_path)
        if isinstance(found, str) or not all(found.get(k) == v for k, v in wanted.items()) or not usable(found):
            continue
        try:
            expected = engine_record(**{k: found.get(k) for k in RECORD_FIELDS})
            engine_path, own_record = engine_paths(engine_dir, graph_id, expected)
        except (TypeError, AttributeError):
            refused.append(f"{os.path.basename(record_path)}: malformed record")
            continue
        if engine_path in excluded:
            continue
        reason = "its key does not match its fields" if own_record != record_path else \
            stale_reason(engine_path, record_path, expected)
        if reason is None:
            return (engine_path, expected), []
        refused.append(f"{os.path.basename(record_path)}: {reason}")
    return None, refused


def build_engine(flavour: Flavour, onnx_path: str, graph_id: str, profile: Profile, precision: str,
                 targets: Sequence[str]) -> bytes:
    """Parse the ONNX graph and build a serialized engine for ``profile`` and ``targets``."""
    trt = flavour.trt
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(flavour.network_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SoatError(f"{MODULES[flavour.name]}'s ONNX parser rejected graph {graph_id!r}: {errors}")
    config = builder.create_builder_config()
    flavour.configure(config, precision, targets)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SoatError(f"{MODULES[flavour.name]} could not build an engine for graph {graph_id!r} "
                        f"({', '.join(targets)}): {'; '.join(logger.errors) or 'no error logged'}")
    return bytes(plan)


def ensure_engine(flavour: Flavour, manifest: Manifest, graph_id: str, engine_dir: str, targets: Sequence[str],
                  max_batch: int = MAX_BATCH, check: bool = False, force: bool = False) -> tuple[str, dict, str]:
    """The cached engine of ``graph_id`` for ``targets``, built (or rebuilt) when missing or stale.

    Returns ``(engine path, record, what happened)``: ``"cached"``, ``"built"`` or
    ``"rebuilt: <reason>"``. With ``check`` nothing is built: a missing or stale engine is a ``SoatError``;
    ``force`` rebuilds an intact one (the flavour refused it on this GPU).
    """
    profile = profile_shapes(manifest.config, graph_id, max_batch)
    expected = engine_record(manifest.graph_sha256(graph_id), flavour.name, flavour.version, ",".join(targets),
                             manifest.dtype, max_batch, profile)
    engine_path, record_path = engine_paths(engine_dir, graph_id, expected)
    reason = "refused on this GPU" if force else stale_reason(engine_path, record_path, expected)
    if reason is None:
        return engine_path, expected, "cached"
    if check:
        raise SoatError(f"the engine of {graph_id!r} ({os.path.basename(engine_path)}) is refused: {reason}")
    plan = build_engine(flavour, manifest.graph_path(graph_id), graph_id, profile, manifest.dtype, targets)
    write_engine(engine_path, record_path, plan, expected)
    return engine_path, expected, "built" if reason == "no cached engine" else f"rebuilt: {reason}"


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_engine(engine_path: str, record_path: str, plan: bytes, record: dict) -> None:
    """Engine first, then its record (with the engine's sha256 and size), each under a temporary name
    then ``os.replace``: a record always vouches for a whole file."""
    os.makedirs(os.path.dirname(engine_path), exist_ok=True)
    _write_atomic(engine_path, plan)
    full = dict(record, engine_sha256=hashlib.sha256(plan).hexdigest(), engine_bytes=len(plan))
    _write_atomic(record_path, json.dumps(full, indent=1).encode())


# ---- the backend ----------------------------------------------------------------------------------
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
    differentiable = False
    capturable = False

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

