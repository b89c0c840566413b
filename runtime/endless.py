"""The endless panorama's public face: what the server, the benchmarks and any caller outside the
runtime use of it. They import this module, never ``soat.runtime.tasks``.

The panorama itself (its sampler, spans, stitching and caches) is defined in
``soat.runtime.tasks.endless``; users call it as ``G.panorama_columns(seed, start, width)``.

Spans:
    ``SpanKey(seed, index, truncation)``  names span ``S_index`` of panorama ``seed``.
    ``spans(G, keys, noise)``       the contributed columns of several spans, one batched call
                                    (padded to ``G.cuda_graphs.padded_batch`` where calls replay).
    ``span(G, key, noise)``         one span's contributed columns, computed alone; cached.
    ``check_truncation(truncation)``  the truncation as a float, or a SoatError.
Columns:
    ``panorama_columns(G, seed, start, width, truncation, noise)``  a column range, exact.
    ``latent_styles(G, seed, index, truncation)``  sigma of endless latent ``index``.
    ``cached_spans(G)``, ``clear_cache(G)``  the per-generator caches.
Geometry (``panorama_geometry``, shared with the finite panorama):
    ``span_pad(size)``              the pad p = 2R // 4 a span leaves out where it meets a neighbour.
    ``span_columns(size, index)``   the span-local ``[lo, hi)`` columns span ``index`` contributes.
    ``column_pieces(size, start, width)``  the ``Piece(index, lo, hi)`` list covering a column range.
    ``stitch(size, pieces, parts, width)``  a column range from its spans' parts (torch or NumPy).
"""

from __future__ import annotations

from .tasks.endless import (SpanKey, cached_spans, check_truncation, clear_cache, latent_styles, panorama_columns,
                            span, spans)
from .tasks.panorama_geometry import Piece, column_pieces, span_columns, span_pad, stitch

__all__ = ["SpanKey", "spans", "span", "check_truncation", "panorama_columns", "latent_styles", "cached_spans",
           "clear_cache", "Piece", "span_pad", "span_columns", "column_pieces", "stitch"]
