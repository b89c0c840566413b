"""The endless panorama: any column range of a seamless panorama without end, on demand.

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
   always in a call of the one batch ``STYLE_BATCH``: the latents missing from the sigma
   cache go ``STYLE_BATCH`` at a time, the last chunk padded with copies of one of its
   rows, and a lone latent is such a chunk too. Every latent thus goes through the same
   kernels at the same shapes, and the rows of a fixed-shape call do not depend on each
   other, so sigma_i is bit-identical whatever range, batch, chunk or row it came in (a
   call at another batch could differ in the last bits: kernels choose their blocking by
   shape). The raw latents are drawn once per run of consecutive indices of a seed.
5. **Spans and stitching,** exactly as the reference panorama's (docs/contract.md#panorama): span
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
``panorama_geometry``; this module is the task. ``Generator.panorama_columns`` calls it;
everyone outside the runtime (the server, the benchmarks) uses its public face,
``soat.runtime.endless``, which lists the public names.
"""

from __future__ import annotations

from itertools import groupby
from typing import TYPE_CHECKING, Iterable, NamedTuple, Sequence

import numpy as np
import torch

from ..checks import check_int, check_seed, check_truncation
from ..noise import NoiseArg
from ..styles import flatten_styles
from .blend import merge_extension
from .endless_cache import cached_spans, caches, clear_cache, replayed
from .endless_sampler import SEED_LIMIT, latents_at
from .panorama import check_output_bytes
from .panorama_geometry import column_pieces, span_columns, stitch

if TYPE_CHECKING:
    from ..generator import Generator

__all__ = ["panorama_columns", "spans", "span", "latent_styles", "latent_styles_batch", "STYLE_BATCH", "SpanKey",
           "check_truncation", "cached_spans", "clear_cache"]

# The batch of every sigma computation (step 4): large enough that a server batch's new latents
# (about one per span) take a few calls, small enough that a lone latent's padded call stays cheap.
STYLE_BATCH = 32

LatentKey = tuple[int, int, float]  # (seed, index, truncation): endless latent ``index`` of ``seed``


class SpanKey(NamedTuple):
    """One span of one endless panorama: ``S_index`` of ``seed`` at ``truncation``."""

    seed: int
    index: int
    truncation: float


def latent_styles(G: Generator, seed: int, index: int, truncation: float) -> list[torch.Tensor]:
    """sigma of endless latent ``index``: ``[1, C_k]`` each, computed in a ``STYLE_BATCH`` call and cached."""
    key = (seed, index, truncation)
    return latent_styles_batch(G, [key])[key]


def latent_styles_batch(G: Generator, keys: Iterable[LatentKey]) -> dict[LatentKey, list[torch.Tensor]]:
    """sigma of each latent in ``keys`` (``[1, C_k]`` each): the cached ones, and the others computed
    ``STYLE_BATCH`` at a time per truncation and cached. The returned map holds every key even when
    the cache is smaller than ``keys``."""
    cache = caches(G).styles
    found = {key: cache.peek(key) for key in dict.fromkeys(keys)}
    missing = sorted((key for key, styles in found.items() if styles is None), key=_truncation_first)
    for truncation, group in groupby(missing, key=lambda key: key[2]):
        group = list(group)
        for key, styles in zip(group, _computed_styles(G, group, truncation)):
            cache.put(key, styles)
            found[key] = styles
    return found


def _truncation_first(key: LatentKey) -> tuple[float, int, int]:
    """Sort order of the missing latents: one group per truncation (a styles call has one), and each
    seed's indices in order inside it (so that consecutive ones share their raw latents)."""
    seed, index, truncation = key
    return truncation, seed, index


def _computed_styles(G: Generator, keys: list[LatentKey], truncation: float) -> list[list[torch.Tensor]]:
    """sigma of ``keys`` (all at ``truncation``), in order: one draw per run of indices, one call per chunk."""
    z = latents_at([(seed, index) for seed, index, _ in keys], G.config.style_dim)
    return [styles for first in range(0, len(keys), STYLE_BATCH)
            for styles in _styles_chunk(G, z[first:first + STYLE_BATCH], truncation)]


def _styles_chunk(G: Generator, z: np.ndarray, truncation: float) -> list[list[torch.Tensor]]:
    """sigma of up to ``STYLE_BATCH`` latents ``z``, in one ``G.styles`` call of batch ``STYLE_BATCH``
    (one host-to-device copy, one graph replay on CUDA: one graph per truncation)."""
    # pad with copies of a real row: any latent is a valid input, while an all-zero row would put
    # PixelNorm's 0 / sqrt(0 + eps) through the mapping (eps underflows in fp16)
    padded = np.concatenate([z, np.repeat(z[-1:], STYLE_BATCH - len(z), axis=0)])
    z_host = torch.from_numpy(padded)
    if G.device.type == "cuda":  # pinned, so the host does not wait for the copy (nor the GPU work before it)
        z_host = z_host.pin_memory()
    flat = replayed(G, _flat_styles, z_host.to(G.device, non_blocking=True), truncation)
    # one copy per latent (the graph's output is overwritten by its next replay), then views per layer
    return [G.unflatten_styles(flat[row:row + 1].clone()) for row in range(len(z))]


def _flat_styles(G: Generator, z: torch.Tensor, truncation: float) -> torch.Tensor:
    """sigma of ``z`` as one ``[B, total]`` tensor (one replayed CUDA graph per truncation)."""
    return flatten_styles(G.styles(z, truncation))


def spans(G: Generator, keys: Sequence[SpanKey], noise: NoiseArg = "fixed") -> list[torch.Tensor]:
    """Spans for ``keys`` in one batched ``merge_extension`` call; each key's contributed columns.

    The sigma of every latent the spans need that is not cached is computed first, ``STYLE_BATCH``
    latents per call (``latent_styles_batch``). Where calls replay CUDA graphs, the batch runs at
    ``G.cuda_graphs.padded_batch(len(keys))`` (the last span repeated), so that a caller batching
    spans of any count (the server) replays a few captures only.

    Returns:
        One ``[1, 3, R, hi - lo]`` tensor per key (``span_columns``), in key order.
    """
    fixed = isinstance(noise, str) and noise == "fixed"
    count = len(keys)
    if fixed and keys:  # where calls replay, a batch runs at one of a few sizes, repeating its last span
        keys = [*keys, *[keys[-1]] * (G.cuda_graphs.padded_batch(count) - count)]
    seconds = [key._replace(index=key.index + 1) for key in keys]
    styles = latent_styles_batch(G, [*keys, *seconds])
    s1, s2 = _stacked(styles, keys), _stacked(styles, seconds)
    if fixed:
        batch = replayed(G, merge_extension, s1, s2, noise)
    else:  # random noise is drawn on the host per call: no graph
        batch = merge_extension(G, s1, s2, noise)
    return _contributed(G.size, batch[:count], keys[:count])


def _contributed(size: int, batch: torch.Tensor, keys: Sequence[SpanKey]) -> list[torch.Tensor]:
    """Each key's contributed columns of ``batch``, copied so that the batch can be freed: one copy
    per run of neighbouring keys with the same columns (every span but S_0 has ``[p, 2R - p)``), so a
    server batch costs a copy or two rather than one per span; each key gets its row of the copy (a
    row kept alone keeps its run's copy alive, never the whole batch)."""
    out: list[torch.Tensor] = []
    first = 0
    for (lo, hi), run in groupby(span_columns(size, key.index) for key in keys):
        count = len(list(run))
        copy = batch[first:first + count, :, :, lo:hi].clone()
        out.extend(copy[b:b + 1] for b in range(count))
        first += count
    return out


def _stacked(styles: dict[LatentKey, list[torch.Tensor]], keys: Sequence[LatentKey]) -> list[torch.Tensor]:
    """The sigma of ``keys`` as one batch: ``[len(keys), C_k]`` each."""
    return [torch.cat(entry) for entry in zip(*(styles[key] for key in keys))]


def span(G: Generator, key: SpanKey, noise: NoiseArg = "fixed") -> torch.Tensor:
    """One span's contributed columns ``[1, 3, R, hi - lo]``, computed alone; cached for fixed noise."""
    if isinstance(noise, str) and noise == "fixed":
        return caches(G).spans.get(key, lambda: spans(G, [key], noise)[0])
    return spans(G, [key], noise)[0]


def panorama_columns(G: Generator, seed: int, start: int, width: int, truncation: float = 0.7,
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
    seed = check_seed(seed, hi=SEED_LIMIT - 1)
    start = check_int(start, "start", 0)
    width = check_int(width, "width", 1)
    check_output_bytes(f"columns [{start}, {start + width})", (1, 3, G.size, width), G.dtype,
                       "ask for fewer columns per call")
    base = SpanKey(seed, 0, check_truncation(truncation))
    pieces = column_pieces(G.size, start, width)
    return stitch(G.size, pieces, (span(G, base._replace(index=p.index), noise) for p in pieces), width)

