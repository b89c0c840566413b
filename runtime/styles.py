"""Sigma space: the per-layer modulation vectors, as a list or one flat vector."""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Callable, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from ..errors import SoatError
from .cudagraph import first_nonfinite
from .files import atomic_output
from .sources import cache_dir, cache_subdir

StyleArg = Union[Sequence[torch.Tensor], torch.Tensor]


def flatten_styles(styles: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate a sigma list ``[[B, C_k]] -> [B, sum C_k]`` in list order."""
    return torch.cat(list(styles), dim=1)


def unflatten_styles(flat: torch.Tensor, channels: Sequence[int]) -> list[torch.Tensor]:
    """Split ``[B, sum C_k]`` into the sigma list ``[[B, C_k]]``."""
    total = sum(channels)
    if not isinstance(flat, torch.Tensor) or flat.ndim != 2 or flat.shape[1] != total:
        shape = list(flat.shape) if isinstance(flat, torch.Tensor) else type(flat).__name__
        raise SoatError(f"flat styles must be a tensor [B, {total}] for this model; got {shape}")
    return list(torch.split(flat, list(channels), dim=1))


def check_styles(styles: StyleArg, channels: Sequence[int], name: str, device: torch.device,
                 dtype: torch.dtype) -> list[torch.Tensor]:
    """Validate a sigma list (or flat vector) for a model and move it to the runtime's device and dtype."""
    if isinstance(styles, torch.Tensor):
        styles = unflatten_styles(styles, channels)
    if not isinstance(styles, (list, tuple)) or len(styles) != len(channels):
        got = f"{len(styles)} entries" if isinstance(styles, (list, tuple)) else type(styles).__name__
        raise SoatError(f"{name} must be a list of {len(channels)} sigma tensors (from G.styles) or a flat "
                        f"[B, {sum(channels)}] tensor; got {got}")
    batch = None
    out = []
    for k, (s, c) in enumerate(zip(styles, channels)):
        if not isinstance(s, torch.Tensor) or s.ndim != 2 or s.shape[1] != c:
            shape = list(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise SoatError(f"{name}[{k}] must be [B, {c}]; got {shape}")
        batch = s.shape[0] if batch is None else batch
        if s.shape[0] != batch or batch == 0:
            raise SoatError(f"{name}[{k}] has batch {s.shape[0]}, but {name}[0] has {batch}; all entries share B >= 1")
        out.append(s.to(device=device, dtype=dtype))
    bad = first_nonfinite(list(styles))
    if bad is not None:
        raise SoatError(f"{name}[{bad}] contains NaN or inf; check the latents that produced it")
    return out


def truncate(styles: Sequence[torch.Tensor], mean: Sequence[torch.Tensor], psi: float) -> list[torch.Tensor]:
    """``sigma_bar + psi * (sigma - sigma_bar)`` per entry; psi = 1 returns the styles unchanged."""
    if psi == 1:
        return list(styles)
    return [m + psi * (s - m) for s, m in zip(styles, mean)]


MEAN_STYLE_SAMPLES = 50_000
MEAN_STYLE_SEED = 0x50A7
MEAN_W_CACHE = "mean_w"  # the cache folder of sampled mean latents


def mean_style_z(style_dim: int) -> torch.Tensor:
    """The z whose mean w centres truncation where a checkpoint has no mean latent: 50,000 draws from a private
    generator (the global RNG is untouched), ``[N, style_dim]`` fp32 on the CPU."""
    return torch.randn(MEAN_STYLE_SAMPLES, style_dim, generator=torch.Generator().manual_seed(MEAN_STYLE_SEED))


def mean_w(w_of: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """The mean of ``w_of(z)`` over ``z [N, 512]``, ``[1, 512]`` float64, summed in chunks of 4096 (so the
    Generator and the exporter get the same centre to the last bits); ``progress``: a bar of its own."""
    total = None
    with tqdm(total=z.shape[0], desc="truncation centre (mean w, once per model)", unit="z", unit_scale=True,
              disable=not progress) as bar:
        for chunk in torch.split(z, 4096):
            part = w_of(chunk).double().sum(0, keepdim=True)
            total = part if total is None else total + part
            bar.update(chunk.shape[0])
    return total / z.shape[0]


def mean_w_key(fingerprint: str | None, backend: str, dtype: torch.dtype, device_type: str) -> str | None:
    """What a sampled mean w is a function of: the weights' fingerprint, the backend, precision and device type
    that computed it, and the torch version (None: weights without a fingerprint are not cached)."""
    if not fingerprint:
        return None
    return f"{fingerprint}|{backend}|{dtype}|{device_type}|torch {torch.__version__}"


def cached_mean_w(key: str | None, style_dim: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A sampled mean w (``compute()``, ``[1, style_dim]`` float64), kept as ``cache_dir()/mean_w/<hash of key>.npy``:
    it is a function of ``key`` alone (the model's fingerprint, backend, precision, device type and torch version)
    and costs 10-20 s on two CPU cores. A missing or unreadable file is computed again; a cache folder that cannot
    be written only costs the next process the same time. ``key`` None: computed, not kept."""
    if key is None:
        return compute()
    name = hashlib.sha256(f"{key}|{MEAN_STYLE_SAMPLES}|{MEAN_STYLE_SEED}".encode()).hexdigest()[:32] + ".npy"
    path = os.path.join(cache_dir(), MEAN_W_CACHE, name)
    with contextlib.suppress(OSError, ValueError, EOFError):
        kept = np.load(path, allow_pickle=False)
        if kept.dtype == np.float64 and kept.shape == (1, style_dim) and np.isfinite(kept).all():
            return torch.from_numpy(kept)
    w = compute()
    with contextlib.suppress(OSError, SoatError):
        cache_subdir(MEAN_W_CACHE)
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.save(f, w.detach().cpu().numpy())
    return w
