"""The one least-recently-used map of the Python runtime (no cache library is a dependency of soat).

Used by the endless panorama's caches (sigma per latent, spans), the server's span cache, the
CUDA-graph captures (``cudagraph.CudaGraphedTask``) and ONNX Runtime's capture slots
(``backends/ort_cuda_graphs.py``); libsoat keeps its own in C++.

Public API: ``LRU``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A small thread-safe least-recently-used map.

    ``capacity``: the most entries kept (None: no bound). ``put`` drops the least recently used
    entries beyond it; ``get(key, make)`` returns the cached value or makes it, and on a miss drops
    the least recently used entry *before* ``make()`` runs, so that a large value (a CUDA graph
    capture) never lives next to the one it replaces. Values are never None (None means absent).
    """

    def __init__(self, capacity: int | None):
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, key: K) -> V | None:
        """The value for ``key`` (marked recently used), or None."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            self._evict(0)

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The cached value, else ``make()`` (run outside the lock, after room was made) stored and returned."""
        value = self.peek(key)
        if value is None:
            with self._lock:
                self._evict(1)
            value = make()
            self.put(key, value)
        return value

    def keys(self) -> list[K]:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def __iter__(self):
        return iter(self.keys())

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _evict(self, room: int) -> None:
        """Drop least recently used entries until ``room`` more fit (under the lock)."""
        while self.capacity is not None and self._items and len(self._items) + room > self.capacity:
            self._items.popitem(last=False)
