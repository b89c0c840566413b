"""The endless panorama's per-generator state: style and span LRUs and CUDA-graph replay.

Everything is keyed weakly by the generator, so dropping a generator drops its caches
and graphs; ``clear_cache(G)`` drops them at once.

Public API: ``caches``, ``replayed``, ``cached_spans``, ``clear_cache``, ``GeneratorCaches``,
``SPAN_CACHE_SIZE``, ``STYLE_CACHE_SIZE``, ``MAX_GRAPHS``.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable

from ..cudagraph import GraphedTask, graphed
from ..lru import LRU

SPAN_CACHE_SIZE = 8
# sigma of two server batches' latents (a batch of B spans needs up to 2B, B up to 64 on CUDA), so the
# latent that ends a stream's spans in one batch is still here when its next batch starts there
# (8,704 values a latent at 256 px: 256 latents hold 9 MB in fp32)
STYLE_CACHE_SIZE = 256
MAX_GRAPHS = 8  # CUDA graphs kept per generator for streaming (each holds its own capture)


class GeneratorCaches:
    """One generator's caches: sigma per latent, contributed columns per span, graphs by name."""

    def __init__(self):
        self.styles = LRU(STYLE_CACHE_SIZE)
        self.spans = LRU(SPAN_CACHE_SIZE)
        self.graphs: dict[str, GraphedTask] = {}


_CACHES: "weakref.WeakKeyDictionary[object, GeneratorCaches]" = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def caches(G) -> GeneratorCaches:
    """The caches of ``G``, made on first use."""
    with _CACHES_LOCK:
        if G not in _CACHES:
            _CACHES[G] = GeneratorCaches()
        return _CACHES[G]


def replayed(G, name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(G, *args)``; on CUDA replayed from a CUDA graph per shape (streaming at batch 1-16 is
    bound by kernel launches otherwise). The result is the graph's static output: copy it.

    The graph holds ``G`` weakly (the caches are keyed weakly by ``G``), and at most
    ``MAX_GRAPHS`` graphs are kept per generator (one per truncation value for the styles);
    calls beyond that run eagerly. The inputs are the model's own (latents from Philox, their
    sigma), never NaN: the replay skips the input check and its host sync, so a server's thread
    launches the next batch while the GPU still runs this one."""
    graphs = caches(G).graphs
    # G.graphs.enabled: on CUDA, graphs asked for at load and a backend whose work can be captured
    if not G.graphs.enabled or (name not in graphs and len(graphs) >= MAX_GRAPHS):
        return fn(G, *args)
    if name not in graphs:
        ref = weakref.ref(G)
        graphs[name] = graphed(lambda *a: fn(ref(), *a), check_inputs=False)
    return graphs[name](*args)


def cached_spans(G) -> list:
    """The span keys of ``G`` held in the ``panorama_columns`` cache, least recently used first."""
    return caches(G).spans.keys()


def clear_cache(G) -> None:
    """Drop the cached styles, spans and CUDA graphs of ``G``."""
    with _CACHES_LOCK:
        _CACHES.pop(G, None)
