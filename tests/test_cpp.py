"""The C++ embedding (issue 19): configure and build libsoat / soat-cpp with CMake (once per session, into
``build/``, which ``.ci/build-cpp.sh`` also uses), then run every soat-cpp command on the shared 32px AOTI
export and compare its PNG with the Python runtime's on the same folder: identical pixels, or at most one
level apart on at most 0.1% of them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import soat
from soat.commands import seed_z
from soat.runtime.images import save_png
from conftest import as_format
from test_aoti import ROOT, aoti_export_dir

pytestmark = pytest.mark.full  # a CMake build and the 32 px AOTI export: minutes (.ci/build-cpp.sh)

BUILD = os.environ.get("SOAT_CPP_BUILD", os.path.join(ROOT, "build"))
TRUNCATION = 0.7


@pytest.fixture(scope="module")
def export_dir() -> str:
    return aoti_export_dir()


@pytest.fixture(scope="module")
def soat_cpp(export_dir) -> str:
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake (and nlohmann-json3-dev, libpng-dev: .ci/build-cpp.sh installs them)")
    prefix = torch.utils.cmake_prefix_path
    configure = ["cmake", "-S", ROOT, "-B", BUILD, f"-DCMAKE_PREFIX_PATH={prefix}", f"-DSOAT_TEST_EXPORT={export_dir}"]
    for cmd in (configure,
                ["cmake", "--build", BUILD, "-j", str(os.cpu_count() or 2)]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return os.path.join(BUILD, "soat-cpp")


@pytest.fixture(scope="module")
def G(export_dir) -> soat.Generator:
    return soat.load(export_dir, backend="aoti")


def _styles(G, seeds):
    s = G.styles(seed_z(seeds, G.config.style_dim), truncation=TRUNCATION)
    return [[t[i:i + 1] for t in s] for i in range(len(seeds))]


def _expand(G, seed, mode):
    (s,) = _styles(G, [seed])
    torch.manual_seed(seed)  # as `soat expand`: random noise from the global RNG seeded with the seed
    return G.expand(s, mode=mode, noise="random")


CASES = {
    "generate": (["generate", "--seed", "3"], lambda G: G.generate(_styles(G, [3])[0])),
    "blend": (["blend", "--seeds", "1", "2"], lambda G: G.blend(*_styles(G, [1, 2]))),
    "blend_vertical": (["blend", "--seeds", "1", "2", "--mode", "vertical"],
                       lambda G: G.blend(*_styles(G, [1, 2]), mode="vertical")),
    "merge": (["merge", "--seeds", "5", "6"], lambda G: G.merge_extension(*_styles(G, [5, 6]))),
    "expand": (["expand", "--seed", "4"], lambda G: _expand(G, 4, "reflect")),
    "expand_vertical": (["expand", "--seed", "4", "--mode", "vertical"], lambda G: _expand(G, 4, "vertical")),
    "columns": (["columns", "--seed", "5", "--start", "10", "--width", "70"],
                lambda G: G.panorama_columns(5, 10, 70, truncation=TRUNCATION)),
    "generate_truncation_1": (["generate", "--seed", "8", "--truncation", "1"],
                              lambda G: G.generate(G.styles(seed_z([8]), truncation=1.0))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_soat_cpp_png_equals_python(soat_cpp, export_dir, G, tmp_path, case):
    args, python = CASES[case]
    out = tmp_path / "cpp.png"
    done = subprocess.run([soat_cpp, args[0], export_dir, *args[1:], "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    save_png(python(G), tmp_path / "py.png")
    got = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    want = np.asarray(Image.open(tmp_path / "py.png").convert("RGB"), dtype=np.int16)
    assert got.shape == want.shape
    diff = np.abs(got - want)
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.001, (int(diff.max()), float((diff > 0).mean()))


def _folder_copy(export_dir, folder, keep_linked: bool):
    """A copy of the export: with its linked graphs and every styled conv's own package unreadable (so that a
    generate which loaded one fails), or as a format 3 folder without linked graphs."""
    import json
    shutil.copytree(export_dir, folder)
    with open(folder / "manifest.json") as f:
        m = json.load(f)
    linked = [gid for gid in m["graphs"] if gid.endswith(".linked")]
    for gid in linked:
        if keep_linked:
            (folder / m["graphs"][gid.removesuffix(".linked")]["file"]).write_bytes(b"not a package")
        else:
            os.remove(folder / m["graphs"].pop(gid)["file"])
    if not keep_linked:  # a valid format 3 manifest: no run plan, no graph shapes (format 5)
        as_format(m, 3)
        with open(folder / "manifest.json", "w") as f:
            json.dump(m, f)
    return folder


def test_generate_runs_the_linked_graphs_and_folders_without_them_node_by_node(soat_cpp, export_dir, tmp_path):
    """soat-cpp generate runs the linked graphs (the styled convs' own packages are never loaded), and a folder
    without linked graphs runs every node's package; both give the same image."""
    images = []
    for name, keep in (("linked", True), ("v3", False)):
        folder = _folder_copy(export_dir, tmp_path / name, keep)
        _run([soat_cpp, "generate", folder, "--seed", "3", "-o", tmp_path / f"{name}.png"])
        images.append(_pixels(tmp_path / f"{name}.png"))
    _run([soat_cpp, "generate", export_dir, "--seed", "3", "-o", tmp_path / "export.png"])
    assert np.array_equal(images[0], _pixels(tmp_path / "export.png"))
    assert np.array_equal(images[1], images[0])


def test_columns_read_the_panorama_geometry_from_the_manifest(soat_cpp, export_dir, tmp_path):
    """The endless panorama's geometry is the exporter's (format 5's "endless"); an older folder says to
    re-export, in one line, rather than assume it."""
    folder = _folder_copy(export_dir, tmp_path / "v3", keep_linked=False)
    done = subprocess.run([soat_cpp, "columns", str(folder), "--seed", "1", "--start", "0", "--width", "9", "-o",
                           str(tmp_path / "c.png")], capture_output=True, text=True)
    assert done.returncode != 0 and "does not record the endless panorama's geometry; re-export" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "c.png").exists()


def readme_service() -> tuple[str, str]:
    """The README's embedding example, compiled as it stands: its ``CMakeLists.txt`` and ``main.cpp`` blocks."""
    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("### C++ embedding", 1)[1]
    cmake, main = (re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1) for lang in ("cmake", "cpp"))
    return cmake, main


def _run(cmd) -> None:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_a_service_links_the_installed_package(soat_cpp, export_dir, tmp_path):
    """The README's embedding: `cmake --install`, then the README's own project (find_package(soat), soat::soat);
    its image and the installed soat-cpp's equal the build tree's soat-cpp."""
    prefix, app = tmp_path / "prefix", tmp_path / "service"
    _run(["cmake", "--install", BUILD, "--prefix", prefix])
    app.mkdir()
    cmake, main = readme_service()
    (app / "CMakeLists.txt").write_text(cmake)
    (app / "main.cpp").write_text(main)
    _run(["cmake", "-S", app, "-B", app / "build", f"-DCMAKE_PREFIX_PATH={prefix};{torch.utils.cmake_prefix_path}"])
    _run(["cmake", "--build", app / "build"])
    _run([app / "build" / "my_service", export_dir, tmp_path / "service.png"])
    usage = subprocess.run([str(app / "build" / "my_service")], capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: my_service")
    broken = subprocess.run([str(app / "build" / "my_service"), str(tmp_path / "none"), str(tmp_path / "x.png")],
                            capture_output=True, text=True)
    assert broken.returncode == 1 and len(broken.stderr.splitlines()) == 1 and "no manifest.json" in broken.stderr
    _run([prefix / "bin" / "soat-cpp", "generate", export_dir, "--seed", "3", "-o", tmp_path / "installed.png"])
    _run([soat_cpp, "generate", export_dir, "--seed", "3", "-o", tmp_path / "build.png"])
    want = _pixels(tmp_path / "build.png")
    assert np.array_equal(_pixels(tmp_path / "service.png"), want)
    assert np.array_equal(_pixels(tmp_path / "installed.png"), want)


@pytest.mark.parametrize("args, message", [
    (["generate", "/no/such/export", "--seed", "1"], "no manifest.json"),
    (["generate", "{dir}", "--seed", "x"], "must be an integer"),
    (["generate", "{dir}", "--seed", "+5"], "--seed +5 must be an integer >= 0"),
    (["generate", "{dir}", "--seed", " 5"], "must be an integer"),
    (["generate", "{dir}", "--seed", "5 "], "must be an integer"),
    (["blend", "{dir}", "--seeds", "1", "0x2"], "must be an integer"),
    (["columns", "{dir}", "--seed", "1", "--start", "+4", "--width", "9"], "--start +4 must be an integer"),
    (["blend", "{dir}", "--seeds", "1", "2", "--mode", "diagonal"], "not a blend mode"),
    (["columns", "{dir}", "--seed", "1", "--start", "-4", "--width", "9"], "start=-4 is out of range"),
    (["paint", "{dir}"], "unknown command"),
    (["bench", "{dir}", "--task", "paint"], "is not one of generate, blend, merge"),
    (["bench", "{dir}", "--batch", "0"], "--batch 0 must be at least 1"),
    (["generate", "{dir}", "--seed", "1", "--cuda-graphs", "maybe"], "--cuda-graphs maybe must be on or off"),
])
def test_soat_cpp_errors_are_one_line_and_nonzero(soat_cpp, export_dir, tmp_path, args, message):
    cmd = [soat_cpp, *[a.format(dir=export_dir) for a in args], "-o", str(tmp_path / "x.png")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode != 0 and not os.path.exists(tmp_path / "x.png")
    first = done.stderr.splitlines()[0]
    assert first.startswith("soat-cpp: error: ") and message in first, done.stderr


@pytest.mark.parametrize("task", ["generate", "blend", "merge"])
def test_soat_cpp_bench_times_each_task(soat_cpp, export_dir, task):
    done = subprocess.run([soat_cpp, "bench", export_dir, "--task", task, "--batch", "2", "--iters", "3",
                           "--warmup", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"soat-cpp bench {task} b2 cpu Float: median ") and "3 iters" in done.stdout


def test_ctest_passes_on_the_export(soat_cpp, export_dir):
    done = subprocess.run(["ctest", "--output-on-failure"], cwd=BUILD, capture_output=True, text=True)
    assert done.returncode == 0 and "soat_export" in done.stdout, done.stdout[-3000:]


def _linked_copy(export_dir, folder) -> dict:
    """A cheap copy of the export: every file a symbolic link to the export's but manifest.json, which is
    returned (``_write_manifest`` puts it back). ``_replace`` swaps a link for a file of its own."""
    import json
    folder.mkdir()
    for name in os.listdir(export_dir):
        if name != "manifest.json":
            os.symlink(os.path.join(export_dir, name), folder / name)
    with open(os.path.join(export_dir, "manifest.json")) as f:
        return json.load(f)


def _write_manifest(folder, manifest: dict) -> None:
    import json
    with open(folder / "manifest.json", "w") as f:
        json.dump(manifest, f)


def _replace(path, data: bytes) -> str:
    """Write data at path instead of the link there (never through it); returns its sha256."""
    import hashlib
    os.remove(path)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _fails_with(cmd, message: str) -> None:
    """soat-cpp exits with status 2 and one line naming the problem, and writes no image."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("soat-cpp: error: ") and message in lines[0], done.stderr


def test_soat_cpp_refuses_a_changed_package(soat_cpp, export_dir, tmp_path):
    """A package whose bytes are not those of its manifest sha256 is not loaded: one line, nothing written."""
    folder = tmp_path / "changed"
    _write_manifest(folder, _linked_copy(export_dir, folder))
    _replace(folder / "input.pt2", b"not the exported package")
    _fails_with([soat_cpp, "generate", folder, "--seed", "3", "-o", tmp_path / "x.png"], "changed since export")
    assert not (tmp_path / "x.png").exists()


def test_soat_cpp_refuses_to_write_nan(soat_cpp, export_dir, tmp_path):
    """An image with NaN (mean styles of NaN, truncated towards) is refused, as Python's save_png refuses it."""
    import io
    folder = tmp_path / "nan"
    m = _linked_copy(export_dir, folder)
    buf = io.BytesIO()
    np.savez(buf, mean_styles=np.full(m["mean_styles"]["shape"], np.nan, dtype=np.float32))
    m["mean_styles"]["sha256"] = _replace(folder / m["mean_styles"]["file"], buf.getvalue())
    _write_manifest(folder, m)
    _fails_with([soat_cpp, "generate", folder, "--seed", "3", "-o", tmp_path / "x.png"], "NaN or infinite")
    assert os.listdir(tmp_path) == ["nan"]


@pytest.mark.parametrize("out", ["x.jpg", "x", ".png", "x.png.tmp"])
def test_soat_cpp_refuses_an_output_not_png(soat_cpp, export_dir, tmp_path, out):
    _fails_with([soat_cpp, "generate", export_dir, "--seed", "3", "-o", tmp_path / out], "must end in .png")
    assert os.listdir(tmp_path) == []


def test_soat_cpp_writes_the_png_whole_and_leaves_no_temporary_files(soat_cpp, export_dir, tmp_path):
    """The PNG appears under its name only when complete (written beside it, renamed); the packages' private
    copies are gone when soat-cpp ends."""
    out, tmp = tmp_path / "out" / "cpp.png", tmp_path / "tmp"
    out.parent.mkdir()
    tmp.mkdir()
    for _ in range(2):  # the second over the first
        done = subprocess.run([soat_cpp, "generate", export_dir, "--seed", "3", "-o", str(out)], capture_output=True,
                              text=True, env={**os.environ, "TMPDIR": str(tmp)})
        assert done.returncode == 0, done.stderr
    assert os.listdir(out.parent) == ["cpp.png"] and os.listdir(tmp) == []
    assert _pixels(out).shape == (32, 32, 3)


def _node_by_node(chain, first: int, last: int) -> list[dict]:
    return [{"graph": n["id"], "writes": n["outputs"]} for n in chain[first:last]]


def test_soat_cpp_runs_layers_as_the_manifest_plans(soat_cpp, export_dir, tmp_path):
    """The run plan is read from the manifest: with generate's run 1:N set node by node, every styled conv's own
    package runs (the linked ones are unreadable) and the image equals the linked run's to fp32 rounding."""
    folder = tmp_path / "plain"
    m = _linked_copy(export_dir, folder)
    n = len(m["chain"])
    m["runs"][f"1:{n}"] = _node_by_node(m["chain"], 1, n)
    for gid, g in m["graphs"].items():
        if gid.endswith(".linked"):
            _replace(folder / g["file"], b"not a package")
    _write_manifest(folder, m)
    _run([soat_cpp, "generate", folder, "--seed", "3", "-o", tmp_path / "plain.png"])
    _run([soat_cpp, "generate", export_dir, "--seed", "3", "-o", tmp_path / "linked.png"])
    diff = np.abs(_pixels(tmp_path / "plain.png").astype(np.int16) - _pixels(tmp_path / "linked.png"))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.001


def _drop_a_run(m):
    del m["runs"]["1:2"]


def _keep_nothing(m):  # conv1's linked step keeps no x, which to_rgb1 then reads
    run = m["runs"][f"1:{len(m['chain'])}"]
    assert run[0]["graph"] == "conv1.linked"
    run[0]["writes"] = []


def _foreign_graph(m):
    m["runs"]["1:2"][0]["graph"] = "convs.0"


@pytest.mark.parametrize("edit, message", [
    (_drop_a_run, "runs of layers"),
    (_keep_nothing, "reads features no earlier step kept"),
    (_foreign_graph, "runs node 'conv1' by graph 'convs.0'"),
])
def test_soat_cpp_refuses_a_broken_run_plan(soat_cpp, export_dir, tmp_path, edit, message):
    folder = tmp_path / "broken"
    m = _linked_copy(export_dir, folder)
    edit(m)
    _write_manifest(folder, m)
    _fails_with([soat_cpp, "generate", folder, "--seed", "3", "-o", tmp_path / "x.png"], message)
