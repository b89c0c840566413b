"""Per-layer noise for a task: fixed buffers, fresh random draws, or explicit tensors (docs/contract.md#noise)."""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch

from ..errors import SoatError
from .cudagraph import first_nonfinite

NoiseArg = Union[str, Sequence[torch.Tensor]]
# (noise_index, batch, height, width) -> noise [1 or B, 1, H, W]
NoiseFn = Callable[[int, int, int, int], torch.Tensor]


def node_noise(node, x: torch.Tensor, noise_at: NoiseFn) -> torch.Tensor | None:
    """The noise for chain ``node`` given its input ``x [B, C, H, W]`` (None for nodes without noise)."""
    return noise_for_input(node, x.shape[0], x.shape[-2], x.shape[-1], noise_at)


def noise_for_input(node, batch: int, height: int, width: int, noise_at: NoiseFn) -> torch.Tensor | None:
    """The noise for chain ``node`` given its input's batch and size (None for nodes without noise)."""
    if node.noise_index is None:
        return None
    return noise_at(node.noise_index, batch, *node.output_size(height, width))


def widen_noise(noise: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """The reference's rule for a noise map that does not broadcast against the layer output.

    A ``[B, 1, H, W]`` draw from a CPU ``torch.Generator`` seeded with the new width,
    then the old noise copied into its first and its last ``old_W`` columns (the second
    copy wins). The reference handles width only; a height mismatch is handled here the
    same way along H (generator seeded with the new height), a documented extension.
    """
    nb, _, nh, nw = noise.shape
    if nw > width or nh > height or nb not in (1, batch):
        raise SoatError(f"noise of shape {list(noise.shape)} cannot feed a layer output of "
                        f"[{batch}, 1, {height}, {width}]; give noise at most the layer's size")
    src = noise.detach().to("cpu", torch.float32)
    if nw != width:
        gen = torch.Generator().manual_seed(width)
        out = torch.zeros([batch, 1, nh, width]).normal_(generator=gen)
        out[..., :nw] = src
        out[..., -nw:] = src
        src = out
    if nh != height:
        gen = torch.Generator().manual_seed(height)
        out = torch.zeros([batch, 1, height, width]).normal_(generator=gen)
        out[..., :nh, :] = src
        out[..., -nh:, :] = src
        src = out
    return src.to(noise.device, noise.dtype)


def _fits(noise: torch.Tensor, batch: int, height: int, width: int) -> bool:
    return noise.shape[-2:] == (height, width) and noise.shape[0] in (1, batch)


def make_noise_fn(noise: NoiseArg, fixed: Sequence[torch.Tensor], cache: dict, device: torch.device,
                  dtype: torch.dtype) -> NoiseFn:
    """Resolve a task's ``noise`` argument into a per-layer noise function.

    ``"fixed"`` uses the checkpoint buffers (widened deterministically and cached when a
    task widens the maps); ``"random"`` draws ``[B, 1, H, W]`` standard normals from the
    global RNG at each call, in layer order; a list gives one tensor per styled conv.
    """
    if isinstance(noise, str):
        if noise == "random":
            return lambda i, b, h, w: torch.empty(b, 1, h, w, device=device, dtype=dtype).normal_()
        if noise != "fixed":
            raise SoatError(f"noise={noise!r} is not a noise mode; use 'fixed', 'random' or a list of tensors")
        return _explicit_fn(fixed, cache)
    return _explicit_fn(check_noise_list(noise, len(fixed), device, dtype), {})


def _explicit_fn(tensors: Sequence[torch.Tensor], cache: dict) -> NoiseFn:
    def noise_at(i: int, b: int, h: int, w: int) -> torch.Tensor:
        t = tensors[i]
        if _fits(t, b, h, w):
            return t
        key = (i, b, h, w)
        if key not in cache:
            cache[key] = widen_noise(t, b, h, w)
        return cache[key]
    return noise_at


def shared_noise(noise_at: NoiseFn) -> NoiseFn:
    """Memoise a noise function, so that chains run side by side in one task get the same draws."""
    memo: dict = {}

    def noise(i: int, b: int, h: int, w: int) -> torch.Tensor:
        if (i, b, h, w) not in memo:
            memo[i, b, h, w] = noise_at(i, b, h, w)
        return memo[i, b, h, w]
    return noise


def check_noise_list(noise: Sequence[torch.Tensor], count: int, device: torch.device,
                     dtype: torch.dtype) -> list[torch.Tensor]:
    if not isinstance(noise, (list, tuple)) or len(noise) != count:
        raise SoatError(f"noise must be 'fixed', 'random' or a list of {count} tensors (one per styled conv); "
                        f"got {type(noise).__name__}" + (f" of length {len(noise)}" if hasattr(noise, "__len__") else ""))
    out = []
    for i, t in enumerate(noise):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != 1:
            shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise SoatError(f"noise[{i}] must be a tensor [1 or B, 1, H, W]; got {shape}")
        out.append(t.to(device=device, dtype=dtype))
    bad = first_nonfinite(list(noise))
    if bad is not None:
        raise SoatError(f"noise[{bad}] contains NaN or inf")
    return out
