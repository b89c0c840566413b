"""Panorama of N images: merge-extension spans of consecutive styles, stitched (docs/contract.md#panorama).

Span ``S_i = merge_extension(sigma_i, sigma_{i+1})`` is ``R x 2R``; with ``p = 2R // 4`` the
output takes ``[0, R + p)`` of S_0, ``[p, 2R - p)`` of every later span, and the last
``p`` columns of the last span: width ``2R + (N - 2) R``. The geometry and the stitching
are ``panorama_geometry``'s, shared with the endless panorama.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from ...errors import SoatError
from ..checks import check_seed, check_truncation
from ..noise import NoiseArg
from ..styles import StyleArg
from .blend import merge_extension
from .panorama_geometry import panorama_pieces, panorama_width, stitch

if TYPE_CHECKING:
    from ..generator import Generator

# What one call may allocate (documented limits; a call over them is refused before any work):
MAX_OUTPUT_BYTES = 2 << 30  # an image a call returns (panorama, panorama_columns): 2 GiB
MAX_STYLE_BYTES = 1 << 30  # the style lists panorama_styles returns: 1 GiB


def check_output_bytes(what: str, shape: Sequence[int], dtype: torch.dtype, instead: str) -> None:
    """Refuse an output of ``shape`` over ``MAX_OUTPUT_BYTES``, naming the limit and ``instead``."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes > MAX_OUTPUT_BYTES:
        raise SoatError(f"{what} would be {list(shape)} ({nbytes / 2 ** 30:.3g} GiB), over the "
                        f"{MAX_OUTPUT_BYTES / 2 ** 30:.3g} GiB a call may allocate (MAX_OUTPUT_BYTES); {instead}")


def check_style_lists(G: Generator, style_lists: Sequence[StyleArg]) -> list[list[torch.Tensor]]:
    if not isinstance(style_lists, (list, tuple)) or len(style_lists) < 2:
        n = len(style_lists) if isinstance(style_lists, (list, tuple)) else type(style_lists).__name__
        raise SoatError(f"a panorama needs a list of N >= 2 style lists; got {n}")
    lists = [G.check_styles(s, f"style_lists[{i}]") for i, s in enumerate(style_lists)]
    batches = {s[0].shape[0] for s in lists}
    if len(batches) != 1:
        raise SoatError(f"every style list of a panorama must have the same batch; got batches {sorted(batches)}")
    return lists


def panorama_stream(G: Generator, style_lists: Sequence[StyleArg], noise: NoiseArg = "fixed",
                    progress: bool = False) -> Iterator[torch.Tensor]:
    """Yield the panorama's column blocks left to right, one span at a time.

    Only one span is alive at a time, so memory does not grow with N. The blocks
    concatenated along W equal ``panorama`` exactly. Arguments are checked at the call,
    before the first block is asked for.
    """
    lists = check_style_lists(G, style_lists)
    G.noise_fn(noise)  # validates the noise argument now
    return _blocks(G, lists, noise, progress)


def _blocks(G: Generator, lists: list[list[torch.Tensor]], noise: NoiseArg, progress: bool) -> Iterator[torch.Tensor]:
    """The column blocks of checked style lists, one merge-extension span at a time."""
    pieces = panorama_pieces(G.size, len(lists))
    for i in _progress(range(len(lists) - 1), progress, "panorama spans"):
        span = merge_extension(G, lists[i], lists[i + 1], noise)
        yield span[..., pieces[i].lo:pieces[i].hi]


def panorama(G: Generator, style_lists: Sequence[StyleArg], noise: NoiseArg = "fixed",
             progress: bool = False) -> torch.Tensor:
    """``[B, 3, R, 2R + (N - 2) R]``, spans written into one preallocated output."""
    lists = check_style_lists(G, style_lists)
    n = len(lists)
    check_output_bytes(f"a panorama of {n} images", (lists[0][0].shape[0], 3, G.size, panorama_width(G.size, n)),
                       G.dtype, "use G.panorama_stream, which yields it span by span")
    return stitch(G.size, panorama_pieces(G.size, n), _blocks(G, lists, noise, progress), panorama_width(G.size, n))


def panorama_latents(n: int, seed: int, style_dim: int = 512) -> np.ndarray:
    """The notebook's smoothed latents: RandomState(seed) normals, Gaussian (sigma 0.7) along the
    image axis with wrap-around, normalised to unit RMS; ``[n, style_dim]`` float32."""
    from scipy.ndimage import gaussian_filter

    z = np.random.RandomState(seed).randn(n, style_dim).astype(np.float32)
    z = gaussian_filter(z, [0.7, 0], mode="wrap")
    z /= np.sqrt(np.mean(np.square(z)))
    return z


def panorama_styles(G: Generator, n: int, seed: int = 0, truncation: float = 0.7) -> list[list[torch.Tensor]]:
    """The reference panorama sampler: N style lists (each ``[1, C_k]``) of smoothed latents."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise SoatError(f"n={n!r}: a panorama needs at least 2 images")
    seed, truncation = check_seed(seed), check_truncation(truncation)
    per_image = (2 * sum(G.style_channels) + 2 * G.config.style_dim) * 4  # z, w, sigma and truncated sigma, fp32
    if n * per_image > MAX_STYLE_BYTES:
        raise SoatError(f"n={n} style lists would take {n * per_image / 2 ** 30:.3g} GiB, over the "
                        f"{MAX_STYLE_BYTES / 2 ** 30:.3g} GiB limit (MAX_STYLE_BYTES; at most "
                        f"{MAX_STYLE_BYTES // per_image} images for this model); for longer panoramas use the endless "
                        "one, G.panorama_columns, whose latents need no global pass")
    z = torch.from_numpy(panorama_latents(n, seed, G.config.style_dim))
    styles = G.styles(z, truncation=truncation)
    return [[s[i:i + 1] for s in styles] for i in range(n)]


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc, unit="span")
