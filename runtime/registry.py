"""Pretrained checkpoints by name, and plain ``https://`` URLs: downloaded once into a cache folder.

``soat.load("ffhq-256")`` or ``--checkpoint ffhq-256`` resolves the name here to a local file,
downloading it on first use:

- one process at a time per file: a download holds ``<name>.lock`` (``fcntl.flock``); other processes
  wait for it and then use the finished file;
- with a progress bar (tqdm), into ``<name>.part`` next to the final file, then renamed (atomic:
  a model file in the cache is always complete);
- resumable, never spliced: the first response's validator (a strong ``ETag``, else ``Last-Modified``) and
  length are kept beside the ``.part`` (``<name>.part.json``); the next call asks for the rest with
  ``Range`` and ``If-Range``, so a file changed on the server comes whole from byte 0. A ``.part`` without a
  validator is resumed only when the entry publishes a SHA-256 (which catches any splice), else restarted; an
  answer starting anywhere but at the offset asked for (``Content-Range``) is restarted from zero;
- complete only by the declared length (the entry's, ``Content-Range``'s or ``Content-Length``) or a chunked
  body's final chunk: a close-delimited body of unknown length, or one the server encoded
  (``Content-Encoding: gzip``), is refused rather than taken for the file;
- bounded in time: every read waits at most ``timeout`` seconds, the whole download at most ``DEADLINE_S``,
  and a transfer slower than ``MIN_RATE`` bytes/s over ``RATE_WINDOW_S`` is stopped (each a one-line error;
  run again to resume);
- checked: the byte count against the entry (or the server's declared length), the SHA-256 against the entry,
  and then the file must load (``fetch``'s ``check``, soat's loaders): a broken checkpoint is removed, not
  cached. Neither SOAT nor NVIDIA publishes hashes or sizes for these files, so the first good download's size
  and SHA-256 are recorded next to it (``<file>.sha256``) and every later use of the cached file is checked
  against that record.

The file is then read by soat's usual loaders (restricted unpickling for ``.pt``/``.pkl``),
never by ``pickle.load``. Names are listed by ``soat models`` / :data:`REGISTRY`.

Bring your own file: a file downloaded elsewhere and put at ``cached_path`` (``soat models --path NAME``) is
used as if soat had downloaded it: checked against the entry's size and SHA-256 where they are published, and
recorded like a download once it loads. With ``SOAT_OFFLINE=1`` (``--offline``) nothing is downloaded: a name
not in the cache is one error naming the file, its size and SHA-256 where known, and the path to put it at.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable

from tqdm import tqdm

from ..errors import SoatError, os_error
from .files import file_sha256, write_atomic
from .filelock import locked

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # the longest wait for one read
DEADLINE_S = 4 * 3600.0  # the longest a whole download may take (an interrupted one resumes)
MIN_RATE = 16 * 1024  # bytes/s, averaged over RATE_WINDOW_S: slower transfers are stopped
RATE_WINDOW_S = 60.0
STATE_SUFFIX = ".json"  # beside the .part: the first response's validator and length
OFFLINE_ENV = "SOAT_OFFLINE"  # 1: never download (soat's --offline sets it for the command)

_NGC = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/"
_ADA = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"
# Google Drive's direct-download endpoint (the ids are those of SOAT's util.py / notebook)
_GDRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="


@dataclass(frozen=True)
class Entry:
    """A published checkpoint: where it is, what it is, and what is known of its bytes."""

    name: str
    url: str
    filename: str
    size: int  # output resolution
    description: str
    source: str  # where the name and URL are published
    nbytes: int | None = None  # published byte count (None: none published)
    sha256: str | None = None  # published SHA-256 (None: recorded on first download)


_SOAT_SRC = "github.com/mchong6/SOAT util.py google_drive_paths (used by its notebook, 256px, channel_multiplier 2)"
_NGC_SRC = "github.com/NVlabs/stylegan3 README, 'StyleGAN2 pre-trained models' (NGC nvidia:research:stylegan2)"
_ADA_SRC = "github.com/NVlabs/stylegan2-ada-pytorch README, 'pretrained' folder"

REGISTRY: dict[str, Entry] = {e.name: e for e in [
    Entry("soat-church", _GDRIVE + "1ORsZHZEeFNEX9HtqRutt1jMgrf5Gpcat", "soat-church.pt", 256,
          "LSUN Church, the SOAT paper's church model (rosinality format)", _SOAT_SRC),
    Entry("soat-landscape", _GDRIVE + "1rN5EhwiY95BBNPvOezhX4SZ_tEOR0qe2", "soat-landscape.pt", 256,
          "landscapes, the SOAT paper's panorama model (rosinality format)", _SOAT_SRC),
    Entry("soat-face", _GDRIVE + "1dOBo4xWUwM7-BwHWZgp-kV1upaD6tHAh", "soat-face.pt", 256,
          "FFHQ faces, the SOAT paper's face model (rosinality format)", _SOAT_SRC),
    Entry("soat-disney", _GDRIVE + "1n2uQ5s2XdUBGIcZA9Uabz1mkjVvKWFeG", "soat-disney.pt", 256,
          "toonified faces fine-tuned from soat-face (translate --checkpoint soat-face --checkpoint2 soat-disney)",
          _SOAT_SRC),
    Entry("ffhq-256", _NGC + "stylegan2-ffhq-256x256.pkl", "stylegan2-ffhq-256x256.pkl", 256,
          "FFHQ faces, NVIDIA StyleGAN2", _NGC_SRC),
    Entry("ffhq-512", _NGC + "stylegan2-ffhq-512x512.pkl", "stylegan2-ffhq-512x512.pkl", 512,
          "FFHQ faces, NVIDIA StyleGAN2", _NGC_SRC),
    Entry("ffhq-1024", _NGC + "stylegan2-ffhq-1024x1024.pkl", "stylegan2-ffhq-1024x1024.pkl", 1024,
          "FFHQ faces, NVIDIA StyleGAN2 (config F)", _NGC_SRC),
    Entry("celebahq-256", _NGC + "stylegan2-celebahq-256x256.pkl", "stylegan2-celebahq-256x256.pkl", 256,
          "CelebA-HQ faces, NVIDIA StyleGAN2", _NGC_SRC),
    Entry("lsundog-256", _NGC + "stylegan2-lsundog-256x256.pkl", "stylegan2-lsundog-256x256.pkl", 256,
          "LSUN Dog, NVIDIA StyleGAN2", _NGC_SRC),
    Entry("metfaces-1024", _NGC + "stylegan2-metfaces-1024x1024.pkl", "stylegan2-metfaces-1024x1024.pkl", 1024,
          "MetFaces (art portraits), NVIDIA StyleGAN2-ADA", _NGC_SRC),
    Entry("afhqcat-512", _ADA + "afhqcat.pkl", "stylegan2-ada-afhqcat.pkl", 512,
          "AFHQ Cat, NVIDIA StyleGAN2-ADA", _ADA_SRC),
    Entry("afhqdog-512", _ADA + "afhqdog.pkl", "stylegan2-ada-afhqdog.pkl", 512,
          "AFHQ Dog, NVIDIA StyleGAN2-ADA", _ADA_SRC),
    Entry("afhqwild-512", _ADA + "afhqwild.pkl", "stylegan2-ada-afhqwild.pkl", 512,
          "AFHQ Wild, NVIDIA StyleGAN2-ADA", _ADA_SRC),
    Entry("brecahad-512", _ADA + "brecahad.pkl", "stylegan2-ada-brecahad.pkl", 512,
          "BreCaHAD histology, NVIDIA StyleGAN2-ADA", _ADA_SRC),
]}

_URL_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def is_remote(source: str) -> bool:
    """A registry name or an ``http(s)://`` URL (resolved by :func:`fetch`)."""
    return source in REGISTRY or source.startswith(("https://", "http://"))


def entry_for(source: str) -> Entry:
    """The registry entry of a name, or an ad-hoc entry for a URL (cached under a name derived from it)."""
    if source in REGISTRY:
        return REGISTRY[source]
    parsed = urllib.parse.urlsplit(source)
    if parsed.scheme not in ("https", "http") or not parsed.netloc:
        raise SoatError(f"{source!r} is neither a model name ({', '.join(REGISTRY)}) nor an https:// URL")
    base = os.path.basename(parsed.path) or "model"
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    return Entry(source, source, f"url-{digest}-{_URL_NAME.sub('_', base)[-80:]}", 0, "a model given by URL",
                 source)


def cached_path(source: str, models_dir: str) -> str:
    """Where the file of a registry name or URL lives in ``models_dir`` (downloaded there, or put there by hand)."""
    return os.path.join(models_dir, entry_for(source).filename)


def _offline() -> bool:
    """``SOAT_OFFLINE=1``: never download (unset, empty or 0: download on first use)."""
    value = os.environ.get(OFFLINE_ENV, "")
    if value not in ("", "0", "1"):
        raise SoatError(f"{OFFLINE_ENV}={value!r} must be 1 (never download) or 0")
    return value == "1"


def _expected_bytes(entry: Entry) -> str:
    """What a file of ``entry`` must be, as far as the entry knows: its size and SHA-256 where published."""
    known = ([f"{entry.nbytes:,} bytes"] if entry.nbytes is not None else []) \
        + ([f"SHA-256 {entry.sha256}"] if entry.sha256 is not None else [])
    return ", ".join(known) or "size and SHA-256 not published; recorded when it first loads"


def _put_by_hand(entry: Entry, path: str) -> str:
    """How to bring the file without soat's download: where it goes and what it must be."""
    return (f"put {entry.filename} ({_expected_bytes(entry)}) at {path} (download it from {entry.url}), or pass "
            "the file's path instead of the name")


def _yourself(entry: Entry) -> str:
    return f"download it yourself and pass its path (or put it where `soat models --path {entry.name}` says)"


def fetch(source: str, models_dir: str, progress: bool = True, timeout: float = TIMEOUT_S,
          check: Callable[[str], object] | None = None) -> str:
    """Local path of a registry name or URL, downloading it into ``models_dir`` first when needed (never with
    ``SOAT_OFFLINE=1``).

    ``check(path)`` (soat's loader) must accept a finished download before it becomes the cached file: one that
    raises ``SoatError`` is removed and the error names it. A file put into the cache by hand must pass it too
    before it is recorded."""
    entry = entry_for(source)
    path = cached_path(source, models_dir)
    if os.path.isfile(path):
        _check_recorded(entry, path)
        if check is not None and not os.path.exists(_record_path(path)):
            _adopt(entry, path, check, progress)
        return path
    if _offline():
        raise SoatError(f"{entry.name} is not in the cache and {OFFLINE_ENV}=1 (--offline) forbids downloading it: "
                        + _put_by_hand(entry, path))
    try:
        os.makedirs(models_dir, exist_ok=True)
    except OSError as e:
        raise os_error(e, f"creating the model cache {models_dir!r} (set SOAT_CACHE_DIR to a writable folder)") \
            from None
    with _download_lock(entry, path, progress):
        if os.path.isfile(path):  # another process finished it while this one waited
            _check_recorded(entry, path)
            return path
        part = path + ".part"
        try:
            total = _download(entry, path, progress, timeout)
            digest = _check_complete(entry, part, total)
            if check is not None:
                _check_loads(entry, part, check)
            _write_record(path, digest, os.path.getsize(part))  # first: a model file in the cache has its record
            os.replace(part, path)
        except OSError as e:
            raise os_error(e, f"writing the download of {entry.name} into {models_dir!r}") from None
        _remove(part + STATE_SUFFIX)
    return path


@contextlib.contextmanager
def _download_lock(entry: Entry, path: str, progress: bool):
    """One download of ``path`` at a time: the others wait (saying so) and then find the file."""
    lock = path + ".lock"
    with locked(lock, blocking=False) as held:
        if held:
            yield
            return
    if progress:
        print(f"waiting for another process downloading {entry.name} ...", file=sys.stderr, flush=True)
    with locked(lock):
        yield


def _adopt(entry: Entry, path: str, check: Callable[[str], object], progress: bool) -> None:
    """A file put into the cache by hand (no record beside it): once it loads, record its size and SHA-256 as a
    download's, so that every later use is checked against them."""
    with _download_lock(entry, path, progress):
        if os.path.exists(_record_path(path)):  # another process recorded it meanwhile
            return
        try:
            check(path)
        except SoatError as e:
            raise SoatError(f"{path}, put into the cache for {entry.name}, is not a model soat can read ({e}); "
                            f"replace it with {entry.filename} from {entry.url} ({_expected_bytes(entry)})") from None
        try:
            _write_record(path, file_sha256(path), os.path.getsize(path))
        except OSError as e:
            raise os_error(e, f"recording {path}") from None


# ---- download ---------------------------------------------------------------------------------
class _Pace:
    """One download's clock: its overall deadline and minimum rate, checked as bytes arrive."""

    def __init__(self, entry: Entry, timeout: float):
        self.entry, self.timeout = entry, timeout
        self.start = self.mark = time.monotonic()
        self.got = self.mark_got = 0

    def read_timeout(self) -> float:
        """The connection's socket timeout: short enough for the deadline and the rate to be checked in time."""
        left = self.start + DEADLINE_S - time.monotonic()
        if left <= 0:
            self._late()
        return max(0.05, min(self.timeout, RATE_WINDOW_S, left))

    def update(self, n: int) -> None:
        self.got += n
        now = time.monotonic()
        if now - self.start > DEADLINE_S:
            self._late()
        if now - self.mark >= RATE_WINDOW_S:
            rate = (self.got - self.mark_got) / (now - self.mark)
            if rate < MIN_RATE:
                raise SoatError(f"download of {self.entry.name} is too slow ({rate:,.0f} bytes/s over the last "
                                f"{now - self.mark:.0f} s, below the minimum {MIN_RATE:,}); run the same command "
                                f"again to resume, or {_yourself(self.entry)}")
            self.mark, self.mark_got = now, self.got

    def _late(self):
        raise SoatError(f"download of {self.entry.name} did not finish within {DEADLINE_S:,.0f} s "
                        f"({self.got:,} bytes received); run the same command again to resume, or "
                        + _yourself(self.entry))


def _download(entry: Entry, path: str, progress: bool, timeout: float) -> int | None:
    """Download ``entry.url`` into ``path.part``, continuing a previous partial download where that is safe;
    returns the declared size (None: a chunked body, complete when its last chunk came)."""
    part = path + ".part"
    pace = _Pace(entry, timeout)
    state = _read_state(entry, part)
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    if have and (not (state.get("validator") or entry.sha256) or have > (state.get("total") or have)):
        have = 0  # nothing says the server's file is the one the part began (no hash would catch a splice)
    for _ in range(3):  # a later try from zero, when the answer could not continue the part
        response = _request(entry, path, have, state, pace)
        if response is None:  # 416: the range starts at or past the end of the server's file
            have, state = 0, {}
            continue
        with response:
            start = _body_start(entry, response, have, state)
            if start is None:
                if not have:
                    raise SoatError(f"{entry.url} answered {response.status} with Content-Range "
                                    f"{response.headers.get('Content-Range')!r} to a request for the whole file; "
                                    + _yourself(entry))
                have, state = 0, {}
                continue
            _check_body(entry, response)
            total = _expected_total(entry, response, start)
            if start == 0:
                state = {"url": entry.url, "validator": _validator(response), "total": total}
                write_atomic(part + STATE_SUFFIX, json.dumps(state))
            _receive(entry, response, part, start, total, progress, pace)
        break
    else:
        raise SoatError(f"download of {entry.name}: {entry.url} keeps answering with ranges that do not continue "
                        "the file; " + _yourself(entry))
    return total


def _request(entry: Entry, path: str, have: int, state: dict, pace: _Pace):
    """The response to a GET of the file for ``path`` (from byte ``have``, only if unchanged since ``state``'s
    validator); None for 416 (the range starts past the end)."""
    request = urllib.request.Request(entry.url, headers={"User-Agent": "soat", "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
        validator = state.get("validator") or {}
        if validator:
            request.add_header("If-Range", next(iter(validator.values())))
    try:
        return urllib.request.urlopen(request, timeout=pace.read_timeout())
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            e.close()
            return None
        raise SoatError(f"download of {entry.name} failed: HTTP {e.code} {e.reason} from {entry.url}; "
                        + _put_by_hand(entry, path)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SoatError(f"download of {entry.name} failed: {reason} ({entry.url}); run again to resume, or "
                        + _put_by_hand(entry, path)) from None


def _body_start(entry: Entry, response, have: int, state: dict) -> int | None:
    """The file offset the body starts at (0, or ``have`` for a continued part), or None when this answer
    cannot continue the part: a range other than the one asked for, or a file changed since the part began."""
    if response.status == 200:
        return 0
    if response.status != 206:
        raise SoatError(f"download of {entry.name} failed: HTTP {response.status} from {entry.url}")
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if m is None or int(m.group(1)) != have:
        return None
    recorded = state.get("validator") or {}
    if any(response.headers.get(k) not in (None, v) for k, v in recorded.items()):
        return None  # the server sent a range of another version of the file
    if have and m.group(3) != "*" and state.get("total") not in (None, int(m.group(3))):
        return None
    return have


def _check_body(entry: Entry, response) -> None:
    """Refuse a web page, an encoded body (its bytes are not the file's) and a body of unknown length."""
    if response.headers.get_content_type() == "text/html":
        raise SoatError(f"{entry.url} answered with a web page, not a model file (a login or a quota page?); "
                        "download it in a browser and pass the file's path to --checkpoint")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise SoatError(f"{entry.url} sent the file encoded (Content-Encoding: {encoding}) although soat asked for "
                        "it as is; " + _yourself(entry))
    if entry.nbytes is None and not getattr(response, "chunked", False) and not (
            response.headers.get("Content-Length") or response.headers.get("Content-Range")):
        raise SoatError(f"{entry.url} did not say how long the file is (no Content-Length), so a cut transfer "
                        "could not be told from a whole one; " + _yourself(entry))


def _validator(response) -> dict:
    """What ``If-Range`` can send back: a strong ``ETag``, else ``Last-Modified`` (none: ``{}``)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return {"ETag": etag}
    modified = response.headers.get("Last-Modified")
    return {"Last-Modified": modified} if modified else {}


def _receive(entry: Entry, response, part: str, start: int, total: int | None, progress: bool,
             pace: _Pace) -> None:
    """Write the body into ``part`` from ``start`` (the part is cut there first), checking the pace."""
    bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
               desc=f"downloading {entry.name}", disable=not progress)
    try:
        with open(part, "r+b" if start else "wb") as f:
            f.truncate(start)
            f.seek(start)
            while True:
                try:
                    chunk = response.read1(CHUNK)  # what has arrived: the pace is checked between reads
                except (OSError, ValueError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                    raise SoatError(f"download of {entry.name} was interrupted ({e or type(e).__name__}); "
                                    "run the same command again to resume") from None
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
                pace.update(len(chunk))
    finally:
        bar.close()


def _expected_total(entry: Entry, response, start: int) -> int | None:
    """The full file size: the entry's, else the server's (``Content-Range`` total or start + length)."""
    if entry.nbytes is not None:
        return entry.nbytes
    m = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if m:
        return int(m.group(1))
    length = response.headers.get("Content-Length", "").strip()
    return start + int(length) if length.isdigit() else None


def _read_state(entry: Entry, part: str) -> dict:
    """The state kept beside ``part`` when it began (``{}`` when none, unreadable, or of another URL)."""
    try:
        with open(part + STATE_SUFFIX) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and state.get("url") == entry.url else {}


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _discard(part: str) -> None:
    """Remove a download and its state."""
    _remove(part)
    _remove(part + STATE_SUFFIX)


def _check_loads(entry: Entry, part: str, check: Callable[[str], object]) -> None:
    """A complete download must load before it is cached; one that does not is removed."""
    try:
        check(part)
    except SoatError as e:
        with open(part, "rb") as f:
            head = f.read(512).lstrip().lower()
        size = os.path.getsize(part)
        _discard(part)
        what = "a web page (a login or a quota page?)" if head.startswith((b"<!doctype html", b"<html")) else \
            f"not a model soat can read ({e})"
        raise SoatError(f"download of {entry.name} from {entry.url} is complete ({size:,} bytes) but {what}; "
                        "removed it. Run again to download it again, or " + _yourself(entry)) \
            from None


# ---- checks -----------------------------------------------------------------------------------
def _check_complete(entry: Entry, part: str, total: int | None) -> str:
    """SHA-256 of a finished download after checking its size against the declared ``total`` and its hash
    against the entry's; a short one is kept to resume, a bad one removed."""
    size = os.path.getsize(part)
    if total is not None and size < total:
        raise SoatError(f"download of {entry.name} stopped at {size:,} of {total:,} bytes; "
                        "run the same command again to resume")
    if total is not None and size > total:
        _discard(part)
        raise SoatError(f"download of {entry.name} has {size:,} bytes, expected {total:,}; removed it")
    digest = file_sha256(part)
    if entry.sha256 is not None and digest != entry.sha256:
        _discard(part)
        raise SoatError(f"download of {entry.name} has SHA-256 {digest}, expected {entry.sha256}; removed it")
    return digest


def _record_path(path: str) -> str:
    return path + ".sha256"


def _write_record(path: str, digest: str, size: int) -> None:
    write_atomic(_record_path(path), f"{digest}  {size}  {os.path.basename(path)}\n")


def _check_recorded(entry: Entry, path: str) -> None:
    """A cached file still has the size and hash published, or recorded at its first download."""
    expected, size = entry.sha256, entry.nbytes
    try:
        with open(_record_path(path)) as f:
            fields = f.read().split()
        expected, size = expected or fields[0], size or int(fields[1])
    except (OSError, IndexError, ValueError):
        pass
    if size is not None and os.path.getsize(path) != size:
        raise SoatError(f"cached {path} has {os.path.getsize(path):,} bytes, expected {size:,}; delete it to "
                        "download again")
    if expected is not None and file_sha256(path) != expected:
        raise SoatError(f"cached {path} does not match its SHA-256 {expected}; delete it to download again")
