"""The two TensorRT flavours: data-center TensorRT (module ``tensorrt``) and TensorRT for RTX
(module ``tensorrt_rtx_bindings``), and the choice between them (``select_flavour``).

Everything else (parse, profiles, build, the engine cache, execution) is written once in
``trt_engines.py`` and ``trt_backend.py``; a flavour is the few named steps that differ:

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
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Sequence

import torch

from ...errors import SoatError
from ..capabilities import BACKENDS
from ..files import write_atomic

FLAVOURS = ("trt", "rtx")
MODULES = {"trt": "tensorrt", "rtx": "tensorrt_rtx_bindings"}
# what runs where TensorRT for RTX does not: every other backend with CUDA (capabilities.BACKENDS)
_OTHERS = [repr(b.name) for b in BACKENDS if "cuda" in b.devices and b.name != "tensorrt"]
RUNNING_BACKENDS = f"backend={', '.join(_OTHERS[:-1])} or {_OTHERS[-1]}"


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
        write_atomic(cache_path, bytes(keep[1].serialize()))


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
