"""Files soat writes and checks: every output built under a temporary name and renamed into place, and the
SHA-256 digest that manifests, download records and engine caches compare."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from typing import Iterator

CHUNK = 1 << 20  # bytes read at a time while hashing


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary name in ``path``'s folder; on success it is renamed to ``path`` (``os.replace``),
    on failure removed. A reader of ``path`` sees the old file or the complete new one, never a part."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a new file's usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """``data`` (text or bytes) to ``path`` through ``atomic_output``."""
    with atomic_output(path) as tmp, open(tmp, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in ``CHUNK``-sized blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()
