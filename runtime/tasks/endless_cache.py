"""The endless panorama's per-generator state: style and span LRUs and CUDA-graph replay.

Everything is keyed weakly by the generator, so dropping a generator drops its caches
and CUDA graphs; ``clear_cache(G)`` drops them at once.

Public API: ``caches``, ``replayed``, ``cached_spans``, ``clear_cache``, ``GeneratorCaches``,
``SPAN_CACHE_SIZE``, ``STYLE_CACHE_SIZE``.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable

from ..cuda_graph_tasks import MAX_CUDA_GRAPHS
from ..cudagraph import CudaGraphedTask
from ..lru import LRU

if TYPE_CHECKING:
    import torch

    from ..generator import Generator

SPAN_CACHE_SIZE = 8
# sigma of two server batches' latents (a batch of B spans needs up to 2B, B up to 64 on CUDA), so the
# latent that ends a stream's spans in one batch is still here when its next batch starts there
# (8,704 values a latent at 256 px: 256 latents hold 9 MB in fp32)
STYLE_CACHE_SIZE = 256


class GeneratorCaches:
    """One generator's caches: sigma per latent, contributed columns per span, and its streaming CUDA
    graphs (made on the first replay)."""

    def __init__(self) -> None:
        self.styles: LRU[tuple[int, int, float], list[torch.Tensor]] = LRU(STYLE_CACHE_SIZE)
        self.spans: LRU[tuple[int, int, float], torch.Tensor] = LRU(SPAN_CACHE_SIZE)
        self.cuda_graphs: CudaGraphedTask | None = None


_CACHES: "weakref.WeakKeyDictionary[object, GeneratorCaches]" = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def caches(G: Generator) -> GeneratorCaches:
    """The caches of ``G``, made on first use."""
    with _CACHES_LOCK:
        if G not in _CACHES:
            _CACHES[G] = GeneratorCaches()
        return _CACHES[G]


def replayed(G: Generator, task: Callable[..., Any], *args: Any) -> Any:
    """``task(G, *args)``; on CUDA replayed from a CUDA graph per (task, shapes, other arguments):
    streaming at batch 1-16 is bound by kernel launches otherwise. ``task`` must be a module-level
    function (it is part of the capture's key). The result is the graph's static output: copy it
    before the next replay.

    The captures hold ``G`` weakly (the caches are keyed weakly by ``G``) and share one memory pool;
    at most ``MAX_CUDA_GRAPHS`` are kept per generator, the least recently used dropped. The inputs
    are the model's own (latents from Philox, their sigma), never NaN: the replay skips the input
    check and its host sync, so a server's thread launches the next batch while the GPU still runs
    this one."""
    # G.cuda_graphs.enabled: on CUDA, CUDA graphs asked for at load and a backend whose work can be captured
    if not G.cuda_graphs.enabled:
        return task(G, *args)
    mine = caches(G)
    if mine.cuda_graphs is None:
        ref = weakref.ref(G)
        mine.cuda_graphs = CudaGraphedTask(lambda task_, *a: task_(ref(), *a), max_captures=MAX_CUDA_GRAPHS,
                                           check_inputs=False)
    return mine.cuda_graphs(task, *args)


def cached_spans(G: Generator) -> list:
    """The span keys of ``G`` held in the ``panorama_columns`` cache, least recently used first."""
    return caches(G).spans.keys()


def clear_cache(G: Generator) -> None:
    """Drop the cached styles, spans and CUDA graphs of ``G``."""
    with _CACHES_LOCK:
        _CACHES.pop(G, None)
