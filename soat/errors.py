"""The one error type users see for their own mistakes, and the one line an ``OSError`` becomes."""

import errno

_OS_HINTS = {errno.ENOSPC: "the disk is full: free some space and run again",
             errno.EDQUOT: "the disk quota is used up: free some space and run again",
             errno.EFBIG: "the file grew past this process's file size limit",
             errno.EROFS: "the file system is read-only: choose a writable folder",
             errno.EACCES: "permission denied"}


class SoatError(ValueError):
    """A user-facing error: its message names the problem and the fix."""


def os_error(e: OSError, doing: str) -> SoatError:
    """An ``OSError`` met while ``doing`` something (``"writing 'x.png'"``) as one line naming the file and the
    system's reason, with what to do where the disk is full or the folder read-only."""
    where = f" ({e.filename})" if e.filename and str(e.filename) not in doing else ""
    reason = _OS_HINTS.get(e.errno or 0) or e.strerror or str(e) or type(e).__name__
    return SoatError(f"{doing}{where} failed: {reason}")
