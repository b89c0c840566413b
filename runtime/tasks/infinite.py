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
   from each later span's ``[p, 2R - p)`` (R columns each) in order.

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
"""

from __future__ import annotations

import math
import operator
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable, NamedTuple, Sequence

import numpy as np
import torch

from ...triton_kernels import ops as K
from ..cudagraph import GraphedTask, graphed
from ...errors import SoatError
from ..noise import NoiseArg
from .blend import merge_extension

SIGMA = 0.7
TRUNCATE = 4.0
RADIUS = int(TRUNCATE * SIGMA + 0.5)  # scipy.ndimage's kernel radius: 3
SEED_LIMIT = 2 ** 64  # Philox's key holds any seed below this
SPAN_CACHE_SIZE = 8
STYLE_CACHE_SIZE = 64
MAX_GRAPHS = 8  # CUDA graphs kept per generator for streaming (each holds its own capture)


class SpanKey(NamedTuple):
    """One span of one endless panorama: ``S_index`` of ``seed`` at ``truncation``."""

    seed: int
    index: int
    truncation: float


def smoothing_weights(sigma: float = SIGMA, radius: int = RADIUS) -> np.ndarray:
    """``[2 * radius + 1]`` float64: scipy.ndimage's order-0 Gaussian kernel (sums to 1)."""
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return phi / phi.sum()


WEIGHTS = smoothing_weights()
NORMALISER = float(np.sqrt(np.sum(WEIGHTS ** 2)))  # expected RMS of the smoothed unit normals


def raw_latent(seed: int, j: int, dim: int = 512) -> np.ndarray:
    """Latent ``j`` before smoothing: ``[dim]`` float64 standard normals keyed by ``(seed, j)``."""
    bits = np.random.Philox(key=seed, counter=(j % 2 ** 64) << 128)
    return np.random.Generator(bits).standard_normal(dim)


def endless_latents(seed: int, first: int, count: int, dim: int = 512) -> np.ndarray:
    """Smoothed, normalised latents ``first .. first + count - 1``: ``[count, dim]`` float32.

    Each row is the same fixed sequence of elementwise operations on its own window,
    so a latent's value does not depend on ``first`` or ``count``.
    """
    raw = np.stack([raw_latent(seed, j, dim) for j in range(first - RADIUS, first + count + RADIUS)])
    out = np.zeros((count, dim))
    for k, w in enumerate(WEIGHTS):
        out += w * raw[k:k + count]
    return (out / NORMALISER).astype(np.float32)


# ---- column geometry ------------------------------------------------------------------------
def piece_bounds(size: int, index: int) -> tuple[int, int]:
    """The ``[lo, hi)`` columns span ``index`` contributes to the endless image (span-local)."""
    p = 2 * size // 4
    return (0, size + p) if index == 0 else (p, 2 * size - p)


def column_pieces(size: int, start: int, width: int) -> list[tuple[int, int, int]]:
    """Cover columns ``[start, start + width)``: a list of ``(span index, lo, hi)``, span-local, in order."""
    head_hi = piece_bounds(size, 0)[1]
    lo, hi = piece_bounds(size, 1)
    step = hi - lo
    pieces = []
    col, stop = start, start + width
    while col < stop:
        if col < head_hi:
            index, local, end = 0, col, head_hi
        else:
            index, offset = divmod(col - head_hi, step)
            index, local, end = index + 1, lo + offset, hi
        n = min(stop - col, end - local)
        pieces.append((index, local, local + n))
        col += n
    return pieces


# ---- spans ----------------------------------------------------------------------------------
class LRU:
    """A small thread-safe least-recently-used map: ``get(key, make)`` returns the cached value or makes it."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, key: Hashable):
        """The value for ``key`` (marked recently used), or None."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: Hashable, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, key: Hashable, make: Callable[[], object]):
        """The cached value, else ``make()`` (run outside the lock) stored and returned."""
        value = self.peek(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def keys(self) -> list:
        with self._lock:
            return list(self._items)


class _Caches:
    def __init__(self):
        self.styles = LRU(STYLE_CACHE_SIZE)
        self.spans = LRU(SPAN_CACHE_SIZE)
        self.graphs: dict[str, GraphedTask] = {}


def _replayed(G, name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(G, *args)``; on CUDA replayed from a CUDA graph per shape (streaming at batch 1-16 is
    bound by kernel launches otherwise). The result is the graph's static output: copy it.

    The graph holds ``G`` weakly (the caches are keyed weakly by ``G``), and at most
    ``MAX_GRAPHS`` graphs are kept per generator (one per truncation value for the styles);
    calls beyond that run eagerly."""
    graphs = _caches(G).graphs
    if G.device.type != "cuda" or (name not in graphs and len(graphs) >= MAX_GRAPHS):
        return fn(G, *args)
    if name not in graphs:
        ref = weakref.ref(G)
        graphs[name] = graphed(lambda *a: fn(ref(), *a))
    return graphs[name](*args)


_CACHES: "weakref.WeakKeyDictionary[object, _Caches]" = weakref.WeakKeyDictionary()


_CACHES_LOCK = threading.Lock()


def _caches(G) -> _Caches:
    with _CACHES_LOCK:
        if G not in _CACHES:
            _CACHES[G] = _Caches()
        return _CACHES[G]


def cached_spans(G) -> list[SpanKey]:
    """The spans of ``G`` held in the ``panorama_columns`` cache, least recently used first."""
    return _caches(G).spans.keys()


def clear_cache(G) -> None:
    """Drop the cached styles, spans and CUDA graphs of ``G``."""
    with _CACHES_LOCK:
        _CACHES.pop(G, None)


def latent_styles(G, seed: int, index: int, truncation: float) -> list[torch.Tensor]:
    """sigma of endless latent ``index``: ``[1, C_k]`` each, computed alone (batch 1) and cached."""
    def make() -> list[torch.Tensor]:
        z = torch.from_numpy(endless_latents(seed, index, 1, G.config.style_dim)).to(G.device)
        styles = _replayed(G, f"styles{truncation!r}", lambda g, z_: g.styles(z_, truncation), z)
        return [s.clone() for s in styles]
    return _caches(G).styles.get((seed, index, truncation), make)


def span_pieces(G, keys: Sequence[SpanKey], noise: NoiseArg = "fixed") -> list[torch.Tensor]:
    """Spans for ``keys`` in one batched ``merge_extension`` call; each key's contributed columns.

    Returns:
        One ``[1, 3, R, hi - lo]`` tensor per key (``piece_bounds``), in key order.
    """
    firsts = [latent_styles(G, k.seed, k.index, k.truncation) for k in keys]
    seconds = [latent_styles(G, k.seed, k.index + 1, k.truncation) for k in keys]
    s1 = [torch.cat(entry) for entry in zip(*firsts)]
    s2 = [torch.cat(entry) for entry in zip(*seconds)]
    if isinstance(noise, str) and noise == "fixed":
        spans = _replayed(G, "merge_extension", lambda g, a, b: merge_extension(g, a, b, noise), s1, s2)
    else:  # random noise is drawn on the host per call: no graph
        spans = merge_extension(G, s1, s2, noise)
    out = []
    for b, key in enumerate(keys):
        lo, hi = piece_bounds(G.size, key.index)
        out.append(spans[b:b + 1, :, :, lo:hi].clone())  # a copy, so the batch can be freed
    return out


def span_piece(G, key: SpanKey, noise: NoiseArg = "fixed") -> torch.Tensor:
    """One span's contributed columns ``[1, 3, R, hi - lo]``, computed alone; cached for fixed noise."""
    if isinstance(noise, str) and noise == "fixed":
        return _caches(G).spans.get(key, lambda: span_pieces(G, [key], noise)[0])
    return span_pieces(G, [key], noise)[0]


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
    base = SpanKey(seed, 0, check_truncation(truncation))
    out = None
    col = 0
    for index, lo, hi in column_pieces(G.size, start, width):
        piece = span_piece(G, base._replace(index=index), noise)
        if out is None:
            out = torch.empty(1, 3, G.size, width, device=piece.device, dtype=piece.dtype)
        K.place_columns(out, piece, col, lo - piece_bounds(G.size, index)[0], hi - lo)
        col += hi - lo
    return out


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
