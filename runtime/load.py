"""``soat.load``: one entry point from a checkpoint, an export folder or the embedded default."""

from __future__ import annotations

import os
import re

import torch

from .backends.torch_backend import TorchBackend
from .checkpoint import load_checkpoint, random_weights
from .config import GeneratorConfig
from ..errors import SoatError
from .generator import Generator
from .nvidia import is_nvidia_pickle, load_nvidia
from .safetensors_format import is_safetensors, load_safetensors

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
BACKENDS = ("torch", "onnxruntime", "tensorrt")
_RANDOM = re.compile(r"^random(?::(\d+))?$")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise SoatError(f"dtype={dtype!r} is not supported; use one of fp32, fp16, bf16")


def parse_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SoatError(f"device={device!r} is not a device; use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SoatError("device='cuda' was asked for but no CUDA GPU is available; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise SoatError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def load(source: str = "random", backend: str = "torch", device: str | torch.device = "cpu",
         dtype: str | torch.dtype = "fp32", size: int | None = None,
         channel_multiplier: int | None = None, fast: bool | None = None) -> Generator:
    """Load a generator.

    Args:
        source: a rosinality/SOAT checkpoint (``{"g_ema": state_dict}``), an NVIDIA StyleGAN2
            ``.pkl`` (read without running code), a soat ``.safetensors`` file, an export folder
            (``soat export``), or ``"random"`` / ``"random:SEED"`` for the embedded seeded model.
        backend: ``torch`` (reference), ``onnxruntime`` or ``tensorrt``.
        device: ``cpu`` or ``cuda``.
        dtype: ``fp32``, ``fp16`` or ``bf16``.
        size, channel_multiplier: the layout; inferred from a checkpoint (given values are
            checked against it), defaults 256 and 2 for the random model.
        fast: torch backend only: the shared-weight channels_last form (default: on for
            fp16/bf16, off for fp32, whose default is the reference form).
    Returns:
        A ``Generator``.
    """
    if backend not in BACKENDS:
        raise SoatError(f"backend={backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    dev, dt = parse_device(device), parse_dtype(dtype)
    source = os.fspath(source)
    if backend != "torch":
        from ..export.backends import load_exported
        return load_exported(source, backend, dev, dt, size, channel_multiplier)
    weights, fingerprint = load_weights(source, size, channel_multiplier)
    noise = weights.fixed_noise()
    return Generator(TorchBackend(weights, dev, dt, fast), weights.config, noise, source, fingerprint)


def load_weights(source: str, size: int | None = None, channel_multiplier: int | None = None):
    """``(StyleGAN2Weights, fingerprint)`` from ``random[:SEED]`` or a file: an NVIDIA pickle, a soat
    ``.safetensors`` file, or a rosinality/SOAT torch checkpoint."""
    m = _RANDOM.match(source)
    if m:
        seed = int(m.group(1) or 0)
        config = GeneratorConfig(size=size or 256, channel_multiplier=channel_multiplier or 2)
        return random_weights(config, seed), f"random:{seed}:{config.size}:{config.channel_multiplier}"
    if is_safetensors(source):
        return load_safetensors(source, size, channel_multiplier)
    if is_nvidia_pickle(source):
        return load_nvidia(source, size, channel_multiplier)
    return load_checkpoint(source, size, channel_multiplier)
