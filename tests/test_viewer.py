"""The browser viewer in headless Chromium (Debian's ``chromium`` driven by Playwright).

``.ci/install-browser.sh`` installs both; without them this module skips with the reason.
The page is served by ``soat serve`` on 127.0.0.1 (a tiny CPU model) and the browser
resolves no other host.
"""

import shutil

import pytest
import torch

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn, websockets) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed; run .ci/install-browser.sh")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed; run .ci/install-browser.sh", allow_module_level=True)

from PIL import Image  # noqa: E402

import soat  # noqa: E402
from soat.serve.app import background_server, create_app  # noqa: E402

SIZE = 8
WIDTH = 48  # canvas columns: small, so the tiny model fills it and the view starts to scroll quickly
WAIT_MS = 90_000  # the longest any one wait may take on a loaded 2-core machine
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
CANVAS_HASH = """() => {
  const c = document.getElementById("view");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let h = 0;
  for (let i = 0; i < d.length; i += 4) h = (Math.imul(h, 31) + d[i] + 3 * d[i + 1] + 7 * d[i + 2]) >>> 0;
  return h;
}"""


def readout(page, name: str) -> int:
    return int(page.text_content(f"#{name}"))


@pytest.fixture(scope="module")
def url():
    G = soat.load("random:0", size=SIZE, channel_multiplier=1)
    G.estimate_mean_styles(torch.randn(2000, 512, generator=torch.Generator().manual_seed(0)))  # cheaper sigma_bar
    with background_server(create_app(G, max_batch=8)) as base:
        yield base


def test_viewer_streams_scrolls_and_saves(url, tmp_path):
    with sync_api.sync_playwright() as p:
        # --headless comes from headless=True; the profile directory is fresh for this test
        browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=FLAGS, accept_downloads=True,
                                                       timeout=WAIT_MS)
        try:
            page = browser.new_page()
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + f"/?seed=3&width={WIDTH}&speed=40", timeout=WAIT_MS)
            assert page.title() == "SOAT endless panorama"

            page.wait_for_function("Number(document.getElementById('frames').textContent) >= 2", timeout=WAIT_MS)
            frames, pixels = readout(page, "frames"), page.evaluate(CANVAS_HASH)
            page.wait_for_function(f"Number(document.getElementById('frames').textContent) >= {frames + 3}",
                                   timeout=WAIT_MS)
            page.wait_for_function(f"({CANVAS_HASH})() !== {pixels}", timeout=WAIT_MS)
            page.wait_for_function("Number(document.getElementById('cps').textContent) > 0", timeout=WAIT_MS)
            page.wait_for_function("Number(document.getElementById('column').textContent) > 0", timeout=WAIT_MS)
            assert page.text_content("#status") == ""  # no stream error, no out-of-order frame

            with page.expect_download(timeout=WAIT_MS) as download:
                page.click("#save")
            saved = Image.open(download.value.path())
            assert saved.format == "PNG" and saved.size == (WIDTH, SIZE)
            assert errors == []
        finally:
            browser.close()
