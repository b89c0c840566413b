"""The one error type users see for their own mistakes, the one line an ``OSError`` becomes, and how to install
an optional extra."""

import errno
import importlib.metadata
import json
import shlex
import sys
import urllib.parse
import urllib.request

_OS_HINTS = {errno.ENOSPC: "the disk is full: free some space and run again",
             errno.EDQUOT: "the disk quota is used up: free some space and run again",
             errno.EFBIG: "the file grew past this process's file size limit",
             errno.EROFS: "the file system is read-only: choose a writable folder",
             errno.EACCES: "permission denied"}


class SoatError(ValueError):
    """A user-facing error: its message names the problem and the fix."""


def print_error(error: Exception) -> None:
    """The one line a command's error is: ``soat: error: ...`` on stderr (then exit status 2, or 1 for the system's
    errors)."""
    print(f"soat: error: {error}", file=sys.stderr, flush=True)


def os_error(e: OSError, doing: str) -> SoatError:
    """An ``OSError`` met while ``doing`` something (``"writing 'x.png'"``) as one line naming the file and the
    system's reason, with what to do where the disk is full or the folder read-only."""
    where = f" ({e.filename})" if e.filename and str(e.filename) not in doing else ""
    reason = _OS_HINTS.get(e.errno or 0) or e.strerror or str(e) or type(e).__name__
    return SoatError(f"{doing}{where} failed: {reason}")


def install_hint(extra: str) -> str:
    """The pip command that adds the optional dependencies ``extra`` (pyproject.toml) to this installation: from
    the checkout of an editable install (``pip install -e .``), else for the installed package."""
    for dist in importlib.metadata.distributions(name="soat"):  # every copy of the metadata on sys.path: a
        try:  # checkout's own build leftovers (soat.egg-info) come first when run from it, and say nothing
            origin = json.loads(dist.read_text("direct_url.json") or "{}")
        except ValueError:
            continue
        if origin.get("dir_info", {}).get("editable") and str(origin.get("url", "")).startswith("file:"):
            checkout = urllib.request.url2pathname(urllib.parse.urlsplit(origin["url"]).path)
            return f"cd {shlex.quote(checkout)} && pip install -e '.[{extra}]'"
    return f"pip install 'soat[{extra}]'"
