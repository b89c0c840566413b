"""Checkpoints by name or URL: download, checks, resume and atomicity against a local HTTP server on
127.0.0.1 serving files the tests write. The registry's real URLs are never contacted."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import re
import socket
import threading
import time

import pytest

import soat
from soat.errors import SoatError
from soat.runtime import registry
from soat.runtime.registry import REGISTRY, Entry, fetch

TIMEOUT = 5.0


class Server:
    """A loopback file server with the behaviours of real and broken ones: ``files[name] = bytes``, ``etags[name]``
    (optional; If-Range is honoured against it), ``mode[name]``:

    ok | error (500) | html (served as text/html) | truncate (half the body, then the connection drops) |
    cut_once (as truncate, then ok) | no_range (200 with the whole file to any range request) | range_from_zero
    (206 with the whole file to any range request) | ignore_if_range (ranges of the current file whatever If-Range
    says) | close / close_cut (no Content-Length: the body ends when the connection closes, whole or at half) |
    gzip (Content-Encoding: gzip) | slow (the body in 20 pieces, 50 ms apart) | drip (one byte per 50 ms, at most
    15 s). A name not in ``files`` is a 404. ``requests`` logs ``(name, headers)``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.mode: dict[str, str] = {}
        self.requests: list[tuple[str, dict]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append((name, dict(self.headers)))
                mode = server.mode.get(name, "ok")
                if name not in server.files or mode == "error":
                    self.send_error(500 if mode == "error" else 404)
                    return
                data, etag = server.files[name], server.etags.get(name)
                start, partial = 0, False
                m = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if m and mode == "range_from_zero":
                    partial = True
                elif m and mode != "no_range" and (self.headers.get("If-Range") in (None, etag)
                                                   or mode == "ignore_if_range"):
                    start, partial = int(m.group(1)), True
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                body = gzip.compress(data) if mode == "gzip" else data[start:]
                self.send_response(206 if partial else 200)
                if partial:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if etag:
                    self.send_header("ETag", etag)
                if mode == "gzip":
                    self.send_header("Content-Encoding", "gzip")
                if mode not in ("close", "close_cut"):
                    self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "text/html" if mode == "html" else "application/octet-stream")
                self.end_headers()
                try:
                    self._body(name, mode, body)
                except OSError:  # the client went away
                    pass

            def _body(self, name: str, mode: str, body: bytes) -> None:
                if mode in ("truncate", "cut_once", "close_cut"):
                    self.wfile.write(body[: len(body) // 2])
                    if mode == "cut_once":
                        server.mode[name] = "ok"
                elif mode in ("slow", "drip"):
                    step = len(body) // 20 + 1 if mode == "slow" else 1
                    end = time.monotonic() + 15
                    for i in range(0, len(body), step):
                        if time.monotonic() > end:
                            break
                        self.wfile.write(body[i:i + step])
                        self.wfile.flush()
                        time.sleep(0.05)
                else:
                    self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def gets(self, name: str) -> list[dict]:
        """The headers of every request for ``name``."""
        return [headers for n, headers in self.requests if n == name]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOAT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    soat.convert("random:3", str(path), size=8, channel_multiplier=1)
    return path.read_bytes()


def register(monkeypatch, server: Server, name: str, data: bytes, **kw) -> Entry:
    server.files[name] = data
    entry = Entry(f"test-{name}", server.url(name), name, 8, "test model", "tests", **kw)
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    return entry


def leftovers(folder) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith((".part", ".tmp"))) if os.path.isdir(folder) else []


def test_a_name_downloads_once_checks_and_loads(server, cache, model_bytes, monkeypatch):
    digest = hashlib.sha256(model_bytes).hexdigest()
    entry = register(monkeypatch, server, "tiny.safetensors", model_bytes, nbytes=len(model_bytes), sha256=digest)
    G = soat.load(entry.name)
    assert G.size == 8 and G.fingerprint == soat.load("random:3", size=8, channel_multiplier=1).fingerprint
    assert (cache / "tiny.safetensors").read_bytes() == model_bytes
    assert leftovers(cache) == []
    soat.load(entry.name)
    assert len(server.requests) == 1  # cached: not downloaded again


def test_plain_url_works_and_records_the_hash(server, cache, model_bytes):
    server.files["m.safetensors"] = model_bytes
    path = fetch(server.url("m.safetensors"), str(cache), progress=False, timeout=TIMEOUT)
    assert open(path, "rb").read() == model_bytes
    record = open(path + ".sha256").read().split()
    assert record[:2] == [hashlib.sha256(model_bytes).hexdigest(), str(len(model_bytes))]
    with open(path, "r+b") as f:  # the cached file changes later: refused against the recorded hash
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(SoatError, match="does not match its SHA-256"):
        fetch(server.url("m.safetensors"), str(cache), progress=False, timeout=TIMEOUT)


@pytest.mark.parametrize("wrong, says", [({"sha256": "0" * 64}, "SHA-256"), ({"nbytes": 10 ** 9}, "stopped at"),
                                          ({"nbytes": 100}, "expected 100")])
def test_wrong_hash_or_size_is_refused_and_removed(server, cache, model_bytes, monkeypatch, wrong, says):
    entry = register(monkeypatch, server, "bad.safetensors", model_bytes, **wrong)
    with pytest.raises(SoatError, match=says):
        fetch(entry.name, str(cache), progress=False, timeout=TIMEOUT)
    assert not (cache / "bad.safetensors").exists()


@pytest.mark.parametrize("mode, says", [("truncate", "interrupted|stopped at"), ("error", "HTTP 500"),
                                        ("html", "web page")])
def test_failed_transfer_is_one_clear_error_and_leaves_no_model_file(server, cache, model_bytes, monkeypatch,
                                                                     mode, says):
    """A body shorter than announced, a server error, a web page (a login or quota page) instead of the file."""
    entry = register(monkeypatch, server, "f.pt", model_bytes)
    server.mode["f.pt"] = mode
    with pytest.raises(SoatError, match=says):
        fetch(entry.name, str(cache), progress=False, timeout=TIMEOUT)
    assert not (cache / "f.pt").exists()


def test_interrupted_transfer_resumes_with_range(server, cache, model_bytes, monkeypatch):
    entry = register(monkeypatch, server, "r.safetensors", model_bytes, sha256=hashlib.sha256(model_bytes).hexdigest())
    server.mode["r.safetensors"] = "cut_once"
    with pytest.raises(SoatError, match="run the same command again to resume"):
        fetch(entry.name, str(cache), progress=False, timeout=TIMEOUT)
    assert (cache / "r.safetensors.part").stat().st_size == len(model_bytes) // 2
    path = fetch(entry.name, str(cache), progress=False, timeout=TIMEOUT)
    assert open(path, "rb").read() == model_bytes
    assert server.gets("r.safetensors")[-1].get("Range") == f"bytes={len(model_bytes) // 2}-"
    assert leftovers(cache) == []


def test_server_without_range_restarts_cleanly(server, cache, model_bytes, monkeypatch):
    entry = register(monkeypatch, server, "n.safetensors", model_bytes, sha256=hashlib.sha256(model_bytes).hexdigest())
    os.makedirs(cache)
    (cache / "n.safetensors.part").write_bytes(model_bytes[:50])
    server.mode["n.safetensors"] = "no_range"
    assert open(fetch(entry.name, str(cache), progress=False, timeout=TIMEOUT), "rb").read() == model_bytes


def test_downloaded_pickle_goes_through_the_safe_loader(server, cache, monkeypatch, tmp_path):
    import pickle
    evil = tmp_path / "evil.pt"
    flag = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {flag}",))
    evil.write_bytes(pickle.dumps({"g_ema": Payload()}))
    entry = register(monkeypatch, server, "evil.pt", evil.read_bytes())
    with pytest.raises(SoatError):
        soat.load(entry.name)
    assert not flag.exists()


def test_registry_entries_are_well_formed():
    assert {"soat-church", "soat-landscape", "soat-face", "ffhq-1024", "ffhq-256"} <= set(REGISTRY)
    for e in REGISTRY.values():
        assert e.url.startswith("https://") and e.size in (256, 512, 1024) and e.source
        assert e.filename.endswith((".pt", ".pkl")) and "/" not in e.filename
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256)


def test_unknown_name_is_a_file_not_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SoatError, match="not found"):
        soat.load("no-such-model")
    assert registry.is_remote("soat-church") and not registry.is_remote("no-such-model")


def test_cli_checkpoint_by_name(server, cache, model_bytes, monkeypatch, tmp_path, capsys):
    from soat.cli import main
    entry = register(monkeypatch, server, "cli.safetensors", model_bytes)
    assert main(["info", "--checkpoint", entry.name]) == 0
    assert "size: 8" in capsys.readouterr().out
    out = tmp_path / "x.safetensors"
    assert main(["convert", "--checkpoint", entry.name, "-o", str(out)]) == 0
    assert soat.load(str(out)).fingerprint == soat.load(entry.name).fingerprint


# ---- bring your own file: offline, and files put into the cache by hand --------------------------
@pytest.fixture
def no_network(monkeypatch):
    """Any connection (urllib's and any other socket's) fails the test: offline means none is tried."""
    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_offline_names_the_file_and_a_file_put_there_by_hand_loads(server, cache, model_bytes, monkeypatch,
                                                                   no_network, capsys):
    from soat.cli import main
    digest = hashlib.sha256(model_bytes).hexdigest()
    entry = register(monkeypatch, server, "byo.safetensors", model_bytes, nbytes=len(model_bytes), sha256=digest)
    monkeypatch.setenv("SOAT_OFFLINE", "1")
    with pytest.raises(SoatError) as e:
        soat.load(entry.name)
    path = cache / "byo.safetensors"
    assert f"not in the cache and SOAT_OFFLINE=1 (--offline) forbids downloading it: put byo.safetensors " \
           f"({len(model_bytes):,} bytes, SHA-256 {digest}) at {path}" in str(e.value)
    assert main(["models", "--path", entry.name]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    path.write_bytes(model_bytes[:-1] + b"\0")  # a wrong file where the registry publishes the hash: refused
    with pytest.raises(SoatError, match="does not match its SHA-256"):
        soat.load(entry.name)
    path.write_bytes(model_bytes)
    assert soat.load(entry.name).fingerprint == soat.load("random:3", size=8, channel_multiplier=1).fingerprint
    assert (cache / "byo.safetensors.sha256").read_text().split()[:2] == [digest, str(len(model_bytes))]
    assert server.requests == []


def test_a_file_put_by_hand_is_recorded_once_it_loads(server, cache, model_bytes, monkeypatch, no_network):
    """Where nothing is published, a file put by hand must load before it is recorded like a download."""
    entry = register(monkeypatch, server, "hand.safetensors", model_bytes)
    cache.mkdir(parents=True)
    path, record = cache / "hand.safetensors", cache / "hand.safetensors.sha256"
    path.write_bytes(b"not a model")
    with pytest.raises(SoatError, match=rf"{re.escape(str(path))}, put into the cache for test-hand.safetensors, is "
                                        r"not a model soat can read .*; replace it with hand.safetensors from http"):
        soat.load(entry.name)
    assert not record.exists()
    path.write_bytes(model_bytes)
    assert soat.load(entry.name).size == 8
    assert record.read_text().split()[:2] == [hashlib.sha256(model_bytes).hexdigest(), str(len(model_bytes))]
    path.write_bytes(model_bytes[:-1] + b"\0")  # changed after it was recorded
    with pytest.raises(SoatError, match="does not match its SHA-256"):
        soat.load(entry.name)


def test_unreachable_server_says_where_the_file_goes(cache, model_bytes, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = Entry("test-gone", f"http://127.0.0.1:{port}/gone.pt", "gone.pt", 8, "test model", "tests")
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    with pytest.raises(SoatError, match=rf"download of test-gone failed: .*; run again to resume, or put gone.pt "
                                        rf"\(size and SHA-256 not published; recorded when it first loads\) at "
                                        rf"{re.escape(str(cache / 'gone.pt'))} \(download it from http"):
        soat.load(entry.name)


def test_offline_takes_1_or_0(cache, monkeypatch):
    monkeypatch.setenv("SOAT_OFFLINE", "yes")
    with pytest.raises(SoatError, match=r"SOAT_OFFLINE='yes' must be 1 \(never download\) or 0"):
        soat.load("soat-church")
