"""Advisory locks (``fcntl.flock``) shared by soat's caches and outputs, and the sweep of debris they allow.

A lock is held on a lock file (created if missing) or on a folder itself. The download cache locks
``<model file>.lock``, the export cache ``<key>.lock``, and an export folder's swap its parent folder; a
temporary folder being written is locked by its writer for as long as it lives, so ``remove_unheld``
can tell a live writer's folder from the debris of a killed one. Without ``fcntl`` (not POSIX) every lock
is granted at once: one process at a time must use a cache there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Callable, Iterator

from ..errors import SoatError

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None


@contextlib.contextmanager
def locked(path: str, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (a lock file, created if missing, or a folder) for the block; yields
    whether it is held (always, when ``blocking``)."""
    if fcntl is None:
        yield True
        return
    try:
        fd = os.open(path, os.O_RDONLY) if os.path.isdir(path) else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise SoatError(f"cannot create or open the lock {path!r} ({e.strerror or e}); the folder must be "
                        "writable (for the caches: set SOAT_CACHE_DIR to a writable local folder)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        except OSError as e:
            raise SoatError(f"cannot lock {path!r} ({e.strerror or e}); use a local folder (this file system "
                            "may not support locks)") from None
        yield True
    finally:
        os.close(fd)


def remove_unheld(root: str, is_debris: Callable[[str], bool], max_age_s: float = 0.0) -> list[str]:
    """Remove the folders under ``root`` whose names ``is_debris`` accepts, that no live process holds (a writer
    locks its folder with ``locked``) and that are at least ``max_age_s`` old; returns their paths. Without
    ``fcntl`` no hold can be seen: only the age tells, and with ``max_age_s`` 0 nothing is removed."""
    removed = []
    if fcntl is None and max_age_s <= 0:
        return removed
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        path = os.path.join(root, name)
        if not is_debris(name) or not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            if now - os.stat(path).st_mtime < max_age_s:
                continue
            with locked(path, blocking=False) as held:
                if held:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        except (OSError, SoatError):
            continue  # gone meanwhile, or not ours to remove
    return removed
