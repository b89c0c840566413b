"""A small thread-safe least-recently-used map (no cache library is a dependency of soat).

Public API: ``LRU``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable


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
