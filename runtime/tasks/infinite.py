"""The endless panorama: any column range of an infinite, seamless panorama, on demand.

The reference panorama (``panorama.py``, unchanged) needs its whole latent sequence up
front: the notebook draws N latents, smooths them with a wrap-around Gaussian and
divides by their global RMS. The endless panorama defines every latent from its index
alone, so that any column can be computed without the ones before it:

1. **Raw latents.** Latent ``j`` (any integer) is 512 standard normals drawn from
   NumPy's counter-based Philox keyed by ``(seed, j)``:
   ``Generator(Philox(key=seed, counter=(j mod 2**64) << 128)).standard_normal(512)``.
   The latent index sits in the counter's upper 128 bits, so the low bits count the
   draws inside one latent and two latents never share a random stream. Latents with
   negative ``j`` exist too, so the first spans are smoothed like every other one.
2. **Smoothing.** ``z_i = sum_k w_k raw_{i+k}`` for ``k = -3..3``, with the weights of
   ``scipy.ndimage.gaussian_filter`` at sigma 0.7, truncate 4.0 (radius
   ``int(4.0 * 0.7 + 0.5) = 3``, ``w_k`` proportional to ``exp(-k^2 / (2 * 0.7^2))``,
   sum 1): the reference's filter, applied in float64. Away from the ends of a finite
   array the two agree; there is no wrap because this sequence has no end (span 0
   reads raw latents -3..4).
3. **Normalising.** The reference divides by the RMS over the whole finite array,
   which an endless sequence does not have. Here the divisor is the fixed
   ``sqrt(sum_k w_k^2)``: the expected RMS of the smoothed sequence (the raw entries
   are independent unit normals), so each smoothed entry is again a unit normal, as in
   the reference for long sequences. A fixed divisor keeps latent i a function of
   ``(seed, i)`` alone and keeps the filter linear (per-latent RMS would not). The
   scale has no effect on the image anyway beyond the 1e-8 of PixelNorm, which the
   mapping network applies first.
4. **Styles.** ``sigma_i = G.styles(z_i, truncation)`` (truncation in sigma space),
   one latent per call so that sigma_i never depends on how a range is batched.
5. **Spans and stitching,** exactly as SPEC's panorama: span
   ``S_i = merge_extension(sigma_i, sigma_{i+1})`` (``R x 2R``), ``p = 2R // 4``;
   column c of the endless image comes from S_0's columns ``[0, R + p)`` first, then
   from each later span's ``[p, 2R - p)`` (R columns each) in order. The geometry and
   the stitching are ``panorama_geometry``'s (shared with the finite panorama).

``panorama_columns(G, seed, start, width)`` computes only the spans that cover
``[start, start + width)``, one span per generator call (batch 1), and keeps the last
few in an LRU keyed by ``(seed, i, truncation)`` for callers that walk along the
panorama. Because every span is computed the same way whatever range asked for it,
any split of a range gives exactly the pixels of the whole range (same device,
dtype and backend). Batching several spans into one call (the server does, for
throughput) may differ from this in the last bits of fp32 on backends whose kernels
depend on the batch size, as the torch CPU one does (about 1e-6).

Relation to the finite reference panorama: for the same N style lists
``sigma_0..sigma_{N-1}`` (``latent_styles(G, seed, i, truncation)`` gives sigma_i),
``G.panorama`` and the endless image agree exactly on the
columns ``[0, 2R + (N - 2) R - p)``; the reference then ends with the last ``p``
columns of ``S_{N-2}``, where the endless image goes on into ``S_{N-1}``. Only the
sampler differs: the reference draws ``RandomState(seed)`` normals, wraps the filter
around the N latents and divides by their RMS (``panorama_styles`` keeps that),
while the endless sampler above gives latents that do not depend on N.

Modules: the sampler (steps 1-3) is ``endless_sampler``, the per-generator caches and
CUDA-graph replay ``endless_cache``, the column geometry and stitching
``panorama_geometry``; this module is the task.

Public API (for ``Generator.panorama_columns``, the server and the benchmarks):
    ``panorama_columns(G, seed, start, width, truncation, noise)``  a column range, exact.
    ``spans(G, keys, noise)``       the contributed columns of several spans, one batched call.
    ``span(G, key, noise)``         one span's contributed columns, computed alone; cached.
    ``latent_styles(G, seed, index, truncation)``  sigma of endless latent ``index``.
    ``SpanKey(seed, index, truncation)``  names a span.
    ``check_truncation(truncation)``  the truncation as a float, or a SoatError.
    ``cached_spans(G)``, ``clear_cache(G)``  the per-generator caches.
    ``LRU``                          the thread-safe LRU these caches use (for callers'
                                     own span caches).
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple, Sequence

import torch

from ...errors import SoatError
from ..noise import NoiseArg
from .blend import merge_extension
from .endless_cache import cached_spans, caches, clear_cache, replayed
from .endless_sampler import SEED_LIMIT, endless_latents
from .lru import LRU
from .panorama import check_output_bytes
from .panorama_geometry import column_pieces, span_columns, stitch

__all__ = ["panorama_columns", "spans", "span", "latent_styles", "SpanKey", "check_truncation",
           "cached_spans", "clear_cache", "LRU"]


class SpanKey(NamedTuple):
    """One span of one endless panorama: ``S_index`` of ``seed`` at ``truncation``."""

    seed: int
    index: int
    truncation: float


def latent_styles(G, seed: int, index: int, truncation: float) -> list[torch.Tensor]:
    """sigma of endless latent ``index``: ``[1, C_k]`` each, computed alone (batch 1) and cached."""
    def make() -> list[torch.Tensor]:
        z = torch.from_numpy(endless_latents(seed, index, 1, G.config.style_dim)).to(G.device)
        styles = replayed(G, f"styles{truncation!r}", lambda g, z_: g.styles(z_, truncation), z)
        return [s.clone() for s in styles]
    return caches(G).styles.get((seed, index, truncation), make)


def spans(G, keys: Sequence[SpanKey], noise: NoiseArg = "fixed") -> list[torch.Tensor]:
    """Spans for ``keys`` in one batched ``merge_extension`` call; each key's contributed columns.

    Returns:
        One ``[1, 3, R, hi - lo]`` tensor per key (``span_columns``), in key order.
    """
    firsts = [latent_styles(G, k.seed, k.index, k.truncation) for k in keys]
    seconds = [latent_styles(G, k.seed, k.index + 1, k.truncation) for k in keys]
    s1 = [torch.cat(entry) for entry in zip(*firsts)]
    s2 = [torch.cat(entry) for entry in zip(*seconds)]
    if isinstance(noise, str) and noise == "fixed":
        batch = replayed(G, "merge_extension", lambda g, a, b: merge_extension(g, a, b, noise), s1, s2)
    else:  # random noise is drawn on the host per call: no graph
        batch = merge_extension(G, s1, s2, noise)
    out = []
    for b, key in enumerate(keys):
        lo, hi = span_columns(G.size, key.index)
        out.append(batch[b:b + 1, :, :, lo:hi].clone())  # a copy, so the batch can be freed
    return out


def span(G, key: SpanKey, noise: NoiseArg = "fixed") -> torch.Tensor:
    """One span's contributed columns ``[1, 3, R, hi - lo]``, computed alone; cached for fixed noise."""
    if isinstance(noise, str) and noise == "fixed":
        return caches(G).spans.get(key, lambda: spans(G, [key], noise)[0])
    return spans(G, [key], noise)[0]


def check_truncation(truncation) -> float:
    """``truncation`` as a float, or a SoatError if it is not a finite number."""
    if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not math.isfinite(truncation):
        raise SoatError(f"truncation={truncation!r} must be a finite number (0.7 is the sampler's default)")
    return float(truncation)


def panorama_columns(G, seed: int, start: int, width: int, truncation: float = 0.7,
                     noise: NoiseArg = "fixed") -> torch.Tensor:
    """Columns ``[start, start + width)`` of the endless panorama of ``seed``.

    Args:
        seed: 0 <= seed < 2**64, selects the latent sequence.
        start: first column, >= 0; width: number of columns, >= 1.
        truncation: psi, applied in sigma space.
        noise: ``"fixed"`` (cached spans, exact under any split), ``"random"`` (every
            span drawn afresh: splits differ) or a list of per-layer tensors.
    Returns:
        ``[1, 3, R, width]`` in [-1, 1] on the generator's device and dtype.
    """
    seed = _check_int("seed", seed, 0, SEED_LIMIT - 1)
    start = _check_int("start", start, 0, None)
    width = _check_int("width", width, 1, None)
    check_output_bytes(f"columns [{start}, {start + width})", (1, 3, G.size, width), G.dtype,
                       "ask for fewer columns per call")
    base = SpanKey(seed, 0, check_truncation(truncation))
    pieces = column_pieces(G.size, start, width)
    return stitch(G.size, pieces, (span(G, base._replace(index=p.index), noise) for p in pieces), width)


def _check_int(name: str, value, lo: int, hi: int | None) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise SoatError(f"{name}={value!r} must be an integer") from None
    if v < lo or (hi is not None and v > hi):
        allowed = f"{lo} <= {name}" + (f" <= {hi}" if hi is not None else "")
        raise SoatError(f"{name}={v} is out of range; allowed: {allowed}")
    return v
