"""The browser viewer in headless Chromium (Debian's ``chromium`` driven by Playwright).

``.ci/install-browser.sh`` installs both; without them this module skips with the reason.
The page is served by ``soat serve`` on 127.0.0.1 (a tiny CPU model, or the load benchmark's
synthetic server) and the browser resolves no other host. One page walks through what a user
does: the loading state, the first tiles, scrolling, bad seeds, a seed change, a lossless save,
and a server restart. One pans and counts the frames the page drops; one follows a CPU's
story: tiles one at a time, each within the ETA the page shows, and a save while streaming.
"""

import io
import shutil
from contextlib import ExitStack

import numpy as np
import pytest
import torch

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, websockets) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is needed to fetch the reference PNG")
pytestmark = pytest.mark.full  # a browser, installed by .ci/install-browser.sh
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed; run .ci/install-browser.sh")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed; run .ci/install-browser.sh", allow_module_level=True)

from PIL import Image  # noqa: E402

import soat  # noqa: E402
from soat.bench.ray_scaling import free_port  # noqa: E402
from soat.bench.serve_load import synthetic_server  # noqa: E402
from soat.serve.app import background_server, create_app  # noqa: E402

SIZE = 8
WIDTH = 48  # canvas columns: small, so the tiny model fills it and the view starts to scroll quickly
WAIT_MS = 90_000  # the longest any one wait may take on a loaded 2-core machine
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
NON_BLACK = """() => {
  const c = document.getElementById("view");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 0) return true;
  return false;
}"""


def number(page, name: str) -> int:
    return int(page.text_content(f"#{name}").replace(",", ""))


def wait_frames(page, more_than: int) -> None:
    page.wait_for_function(f"Number(document.getElementById('frames').textContent.replace(/,/g, '')) > {more_than}",
                           timeout=WAIT_MS)


@pytest.fixture
def browser(tmp_path):
    """A fresh headless Chromium profile (downloads accepted)."""
    with sync_api.sync_playwright() as p:
        # --headless comes from headless=True; the profile directory is fresh for this test
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=FLAGS, accept_downloads=True,
                                                       timeout=WAIT_MS)
        try:
            yield context
        finally:
            context.close()


def info(url: str) -> dict:
    return httpx.get(url + "/api/info", timeout=WAIT_MS / 1000).json()


@pytest.fixture(scope="module")
def G():
    G = soat.load("random:0", size=SIZE, channel_multiplier=1)
    G.estimate_mean_styles(torch.randn(2000, 512, generator=torch.Generator().manual_seed(0)))  # cheaper sigma_bar
    return G


def test_viewer_loads_streams_validates_saves_and_recovers(G, tmp_path):
    port = free_port()
    with ExitStack() as server, sync_api.sync_playwright() as p:
        url = server.enter_context(background_server(create_app(G, max_batch=8), port=port))
        # --headless comes from headless=True; the profile directory is fresh for this test
        browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=FLAGS, accept_downloads=True,
                                                       timeout=WAIT_MS)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + f"/?seed=3&width={WIDTH}", timeout=WAIT_MS)
            assert page.title() == "SOAT endless panorama"

            # the loading state says what is happening: model, device, first tile ETA
            page.wait_for_function("window.soatViewer.states.some(s => s.includes('Streaming seed 3'))",
                                   timeout=WAIT_MS)
            loading = " | ".join(page.evaluate("window.soatViewer.states"))
            assert f"{SIZE} px" in loading and "torch on cpu" in loading and "first tile" in loading, loading

            # the first tiles: the canvas is no longer black, the overlay goes, the view scrolls smoothly
            page.wait_for_function(NON_BLACK, timeout=WAIT_MS)
            page.wait_for_function("document.getElementById('overlay').classList.contains('hidden')", timeout=WAIT_MS)
            page.wait_for_function("Number(document.getElementById('column').textContent.replace(/,/g, '')) > 0",
                                   timeout=WAIT_MS)
            page.wait_for_function("Number(document.getElementById('cps').textContent.replace(/,/g, '')) > 0",
                                   timeout=WAIT_MS)
            assert page.get_attribute("#status", "class") != "error", page.text_content("#status")
            assert "seed=3" in page.url and "x=" in page.url  # the view is in the URL

            # bad seeds are refused in the page, visibly, without opening a stream
            connections = page.evaluate("window.soatViewer.connections")
            for bad in ("-5", "3.5", "1e30"):
                page.fill("#seed", bad)
                page.click("#go")
                assert f'"{bad}" is not a seed' in page.text_content("#status")
                assert page.get_attribute("#seed", "aria-invalid") == "true"
            assert page.evaluate("window.soatViewer.connections") == connections and "seed=3" in page.url

            # a seed change: exactly one new WebSocket, and the stream recovers
            page.fill("#seed", "11")
            page.click("#go")
            assert page.evaluate("window.soatViewer.connections") == connections + 1
            page.wait_for_function("location.search.includes('seed=11')", timeout=WAIT_MS)
            wait_frames(page, 1)
            page.wait_for_function(NON_BLACK, timeout=WAIT_MS)

            # save: the exact pixels of the visible range (from /api/panorama.png, not the JPEG canvas)
            with page.expect_download(timeout=WAIT_MS) as download:
                page.click("#save")
            saved = page.evaluate("window.soatViewer.saved")
            assert (saved["seed"], saved["w"]) == (11, WIDTH)
            image = Image.open(download.value.path())
            assert image.format == "PNG" and image.size == (WIDTH, SIZE)
            pixels = np.asarray(image.convert("RGB"))
            reference = httpx.get(url + "/api/panorama.png", params={"seed": 11, "x": saved["x"], "w": WIDTH},
                                  timeout=WAIT_MS / 1000).content
            assert np.array_equal(pixels, np.asarray(Image.open(io.BytesIO(reference)).convert("RGB")))
            assert np.array_equal(pixels, soat.to_uint8(G.panorama_columns(11, saved["x"], WIDTH))[0])

            # a server restart: the page retries with backoff and resumes where its stream stopped
            server.close()
            page.wait_for_function("document.getElementById('status').textContent.includes('reconnecting')",
                                   timeout=WAIT_MS)
            frames = number(page, "frames")
            server.enter_context(background_server(create_app(G, max_batch=8), port=port))
            page.wait_for_function("window.soatViewer.resumes.length > 0", timeout=WAIT_MS)
            wait_frames(page, frames)
            resumed = page.evaluate("window.soatViewer.resumes[0]")
            assert resumed > 0 and resumed % 1 == 0  # not back at column 0
            page.wait_for_function("document.getElementById('status').textContent.includes('resumed at column')",
                                   timeout=WAIT_MS)
            wait_frames(page, frames + 1)
            assert page.get_attribute("#status", "class") == "info", page.text_content("#status")  # no gap, in order
            assert errors == []
        finally:
            browser.close()


PAN_SPEED = 240  # columns/s: 4 a frame at 60 Hz, so every frame of the pan must move the canvas
PAN_S = 3.0
DROPPED_BUDGET = 0.05  # of the frames of a pan, at most this share may be slow (over the page's FRAME_BUDGET_MS)
# or fail to move the canvas
MIN_FPS = 20  # requestAnimationFrame runs at the display rate (60 Hz headless); a loaded 2-core runner is slower


def test_viewer_pans_at_the_display_rate_without_dropping_frames(browser):
    # the benchmark's synthetic server: free spans, so tiles come as fast as the page asks, in bursts
    with synthetic_server(32, None, 16) as url:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + f"/?seed=2&width=256&speed={PAN_SPEED}", timeout=WAIT_MS)
        page.wait_for_function("Number(document.getElementById('column').textContent.replace(/,/g, '')) > 256",
                               timeout=WAIT_MS)  # panning at full speed
        page.evaluate("Object.assign(window.soatViewer.frameStats, {frames: 0, slow: 0, panning: 0, stalled: 0})")
        page.wait_for_timeout(PAN_S * 1000)
        stats = page.evaluate("window.soatViewer.frameStats")
        assert errors == []
    frames = stats["frames"]
    assert frames >= MIN_FPS * PAN_S, stats
    assert stats["panning"] >= 0.9 * frames, stats  # the view moved by a column or more in nearly every frame
    assert stats["slow"] + stats["stalled"] <= DROPPED_BUDGET * frames, stats


ETA_SLACK = 1.5, 1.0  # a tile may come up to 1.5 x its ETA + 1 s late (a loaded 2-core machine) and still count


def test_viewer_on_a_cpu_shows_tiles_within_their_eta_and_saves_while_streaming(G, browser):
    # target_batch_s=0: one span a batch, as on a CPU, whatever this machine's load (test_serve checks the policy)
    with background_server(create_app(G, max_batch=8, target_batch_s=0.0)) as url:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + f"/?seed=13&width={WIDTH}&speed=3000", timeout=WAIT_MS)  # fast: the page always owes tiles
        page.wait_for_function("window.soatViewer.etaChecks.some(c => c.seq >= 1)", timeout=WAIT_MS)
        check = page.evaluate("window.soatViewer.etaChecks.find(c => c.seq >= 1)")
        took = (check["arrived_at"] - check["shown_at"]) / 1000
        assert took <= ETA_SLACK[0] * check["eta_s"] + ETA_SLACK[1], check
        assert page.text_content("#eta").startswith("next tile")
        wait_frames(page, 3)
        page.wait_for_function("Number(document.getElementById('server-cps').textContent.replace(/,/g, '')) > 0",
                               timeout=WAIT_MS)  # the server's rate counts the batches it finishes

        assert info(url)["pending_spans"] > 0  # streaming
        frames = number(page, "frames")
        with page.expect_download(timeout=WAIT_MS) as download:
            page.click("#save")
        assert info(url)["pending_spans"] > 0  # the save came while the stream still had work
        assert number(page, "frames") > frames  # and the stream went on meanwhile
        saved = page.evaluate("window.soatViewer.saved")
        pixels = np.asarray(Image.open(download.value.path()).convert("RGB"))
        assert np.array_equal(pixels, soat.to_uint8(G.panorama_columns(13, saved["x"], WIDTH))[0])
        assert errors == []
