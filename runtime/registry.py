"""Pretrained checkpoints by name, and plain ``https://`` URLs: downloaded once into a cache folder.

``soat.load("ffhq-256")`` or ``--checkpoint ffhq-256`` resolves the name here to a local file,
downloading it on first use:

- with a progress bar (tqdm), into ``<name>.part`` next to the final file, then renamed (atomic:
  a model file in the cache is always complete);
- resumable: an interrupted download keeps its ``.part`` and the next call asks the server for
  the rest (HTTP ``Range``); a server that ignores ``Range`` gets a fresh download;
- checked: the byte count against the entry (or the server's ``Content-Length``) and the
  SHA-256 against the entry. Neither SOAT nor NVIDIA publishes hashes or sizes for these files,
  so the first complete download's size and SHA-256 are recorded next to it
  (``<file>.sha256``) and every later use of the cached file is checked against that record.

The file is then read by soat's usual loaders (restricted unpickling for ``.pt``/``.pkl``),
never by ``pickle.load``. Names are listed by ``soat models`` / :data:`REGISTRY`.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from tqdm import tqdm

from ..errors import SoatError

CHUNK = 1 << 20
TIMEOUT_S = 60.0

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


def fetch(source: str, models_dir: str, progress: bool = True, timeout: float = TIMEOUT_S) -> str:
    """Local path of a registry name or URL, downloading it into ``models_dir`` first when needed."""
    entry = entry_for(source)
    path = os.path.join(models_dir, entry.filename)
    if os.path.isfile(path):
        _check_recorded(entry, path)
        return path
    os.makedirs(models_dir, exist_ok=True)
    part = path + ".part"
    _download(entry, part, progress, timeout)
    digest = _check_complete(entry, part)
    os.replace(part, path)
    _write_record(path, digest, os.path.getsize(path))
    return path


# ---- download ---------------------------------------------------------------------------------
def _download(entry: Entry, part: str, progress: bool, timeout: float) -> None:
    """Download ``entry.url`` into ``part``, continuing a previous partial download when the server allows."""
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    if entry.nbytes is not None and have > entry.nbytes:
        os.remove(part)
        have = 0
    request = urllib.request.Request(entry.url, headers={"User-Agent": "soat", "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the range starts at or past the end: start again
            os.remove(part)
            return _download(entry, part, progress, timeout)
        raise SoatError(f"download of {entry.name} failed: HTTP {e.code} {e.reason} from {entry.url}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SoatError(f"download of {entry.name} failed: {reason} ({entry.url}); "
                        "run again to resume, or download the file yourself and pass its path") from None
    with response:
        if response.status == 200 and have:  # the server ignored Range: the body is the whole file
            have = 0
        _check_not_html(entry, response)
        total = _expected_total(entry, response, have)
        mode = "ab" if have else "wb"
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"downloading {entry.name}", disable=not progress)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, ValueError) as e:  # connection reset, timeout, IncompleteRead
                        raise SoatError(f"download of {entry.name} was interrupted ({e}); "
                                        "run the same command again to resume") from None
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
    if total is not None and os.path.getsize(part) < total:
        raise SoatError(f"download of {entry.name} stopped at {os.path.getsize(part):,} of {total:,} bytes; "
                        "run the same command again to resume")


def _expected_total(entry: Entry, response, have: int) -> int | None:
    """The full file size: the entry's, else the server's (``Content-Range`` total or offset + length)."""
    if entry.nbytes is not None:
        return entry.nbytes
    content_range = response.headers.get("Content-Range", "")
    m = re.match(r"bytes \d+-\d+/(\d+)", content_range)
    if m:
        return int(m.group(1))
    length = response.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def _check_not_html(entry: Entry, response) -> None:
    if response.headers.get_content_type() == "text/html":
        raise SoatError(f"{entry.url} answered with a web page, not a model file (a login or a quota page?); "
                        "download it in a browser and pass the file's path to --checkpoint")


# ---- checks -----------------------------------------------------------------------------------
def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check_complete(entry: Entry, part: str) -> str:
    """SHA-256 of a finished download after checking size and hash; a bad file is removed."""
    size = os.path.getsize(part)
    if entry.nbytes is not None and size != entry.nbytes:
        os.remove(part)
        raise SoatError(f"download of {entry.name} has {size:,} bytes, expected {entry.nbytes:,}; removed it")
    digest = sha256_file(part)
    if entry.sha256 is not None and digest != entry.sha256:
        os.remove(part)
        raise SoatError(f"download of {entry.name} has SHA-256 {digest}, expected {entry.sha256}; removed it")
    return digest


def _record_path(path: str) -> str:
    return path + ".sha256"


def _write_record(path: str, digest: str, size: int) -> None:
    tmp = _record_path(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{digest}  {size}  {os.path.basename(path)}\n")
    os.replace(tmp, _record_path(path))


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
    if expected is not None and sha256_file(path) != expected:
        raise SoatError(f"cached {path} does not match its SHA-256 {expected}; delete it to download again")
