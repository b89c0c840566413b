"""The ``soat`` command line on a small random model: every task command, the demo, the bench, and
every user mistake as one line ``soat: error: ...`` with exit status 2, found before a model loads."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import soat
from soat import commands
from soat.cli import build_parser, main, parse_seeds
from soat.errors import SoatError
from soat.runtime.capabilities import AUTO, BACKEND_CHOICES, BACKENDS

SMALL = ["--size", "32", "--channel-multiplier", "1"]
TINY = ["--size", "8", "--channel-multiplier", "1"]


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


@pytest.fixture
def no_load(monkeypatch):
    """Any model load fails the test: the error must come before loading."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")
    monkeypatch.setattr(soat, "load", refuse)


def one_line_error(capsys, *parts: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("soat: error: ") and err.count("\n") == 1, err
    for part in parts:
        assert part in err, err
    return err


# ---- the commands ------------------------------------------------------------------------------
def test_generate_writes_one_png_per_seed_and_needs_force_to_replace(tmp_path, capsys):
    assert main(["generate", *TINY, "--seeds", "0-1,5", "-o", str(tmp_path)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["seed0000.png", "seed0001.png", "seed0005.png"]
    assert png_size(tmp_path / "seed0005.png") == (8, 8)
    capsys.readouterr()
    assert main(["generate", *TINY, "--seeds", "5", "-o", str(tmp_path)]) == 2
    one_line_error(capsys, "seed0005.png exists", "--force")
    before = (tmp_path / "seed0005.png").stat().st_mtime_ns
    assert main(["generate", *TINY, "--seeds", "5", "-o", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "seed0005.png").stat().st_mtime_ns >= before


def test_generate_streams_small_batches(tmp_path, monkeypatch):
    """200000 seeds: z, styles and images are made per small batch and written as they come."""
    made, written = [], []
    real_seed_z = commands.seed_z

    def counting_seed_z(seeds, style_dim=512):
        made.append(len(list(seeds)))
        return real_seed_z(seeds, style_dim)

    def save_then_stop(img, path):
        written.append(path)
        if len(written) == 3:
            raise KeyboardInterrupt
        return [path]
    monkeypatch.setattr(commands, "seed_z", counting_seed_z)
    monkeypatch.setattr("soat.runtime.images.save_png", save_then_stop)
    assert main(["generate", *TINY, "--seeds", "0-199999", "-o", str(tmp_path / "many")]) == 130
    assert made == [commands.GENERATE_BATCH] and len(written) == 3


def test_info_prints_layout_and_survives_a_closed_pipe(capsys):
    assert main(["info", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "size: 32" in out and "channel_multiplier: 1" in out and "sigma entries: 11" in out
    assert "truncation centre: sampled" in out  # the random model carries no w_avg
    r = subprocess.run(f"{sys.executable} -m soat info --size 32 | head -1", shell=True, capture_output=True,
                       text=True, timeout=120)
    assert r.stdout.startswith("source:") and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


def test_info_offers_only_what_it_uses():
    sub = subparsers()["info"]
    flags = {s for a in sub._actions for s in a.option_strings}
    assert flags == {"-h", "--help", "--checkpoint", "--backend", "--size", "--channel-multiplier", "--offline"}


# each command loads its model (seconds): the fast tier runs the first and the last
@pytest.mark.parametrize("argv, size", [
    (["blend", "--mode", "vertical", "--seeds", "3,4"], (32, 32)),
    pytest.param(["merge"], (64, 32), marks=pytest.mark.full),
    pytest.param(["merge", "--linear"], (64, 32), marks=pytest.mark.full),
    pytest.param(["panorama", "--n", "3", "--seeds", "7"], (96, 32), marks=pytest.mark.full),
    pytest.param(["expand", "--mode", "vertical"], (32, 64), marks=pytest.mark.full),
    pytest.param(["bbox", "--box", "4", "4", "16", "12", "--pose-align"], (32, 32), marks=pytest.mark.full),
    pytest.param(["swap", "--boxes", "0", "0", "16", "16", "16", "16", "16", "16"], (32, 32), marks=pytest.mark.full),
    pytest.param(["shift", "--source", "0", "0", "8", "8", "--target", "16", "0", "--target", "8", "16"], (32, 32),
                 marks=pytest.mark.full),
    (["translate", "--checkpoint2", "random:1"], (32, 32)),
])
def test_task_commands_write_their_image(tmp_path, argv, size):
    out = tmp_path / "out.png"
    assert main([argv[0], *SMALL, *argv[1:], "-o", str(out)]) == 0
    assert png_size(out) == size
    assert os.listdir(tmp_path) == ["out.png"]  # written under a temporary name, renamed: nothing else left


def test_codes_are_indexed_by_seeds(tmp_path):
    G = soat.load("random", size=8, channel_multiplier=1)
    codes = tmp_path / "codes.pt"
    soat.save_codes(codes, G.styles(torch.randn(3, 512)), G)
    assert main(["blend", *TINY, "--codes", str(codes), "--seeds", "2,0", "-o", str(tmp_path / "b.png")]) == 0
    assert main(["generate", *TINY, "--codes", str(codes), "-o", str(tmp_path / "g")]) == 0
    assert sorted(os.listdir(tmp_path / "g")) == ["seed0000.png", "seed0001.png", "seed0002.png"]
    assert main(["blend", *TINY, "--codes", str(codes), "--seeds", "0,3", "-o", str(tmp_path / "c.png")]) == 2


def test_convert_takes_checkpoint_and_writes_atomically(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["convert", "--checkpoint", "random:2", *TINY, "-o", str(out)]) == 0
    assert soat.load(str(out)).size == 8 and os.listdir(tmp_path) == ["m.safetensors"]
    assert main(["convert", "--checkpoint", "random:2", *TINY, "-o", str(out)]) == 2
    one_line_error(capsys, "exists", "--force")


@pytest.mark.full
def test_demo_writes_gallery_labelled_random_weights(tmp_path, capsys):
    assert main(["demo", *SMALL, "-o", str(tmp_path)]) == 0
    pngs = [f for f in os.listdir(tmp_path) if f.endswith(".png")]
    page = (tmp_path / "index.html").read_text()
    assert len(pngs) == 11
    assert all(f'src="{f}"' in page for f in pngs)
    assert "RANDOM WEIGHTS" in page and "not real pictures" in page
    capsys.readouterr()
    assert main(["demo", *SMALL, "-o", str(tmp_path)]) == 2
    one_line_error(capsys, "exists", "--force")
    assert main(["demo", "--size", "16", "-o", str(tmp_path / "small")]) == 2
    one_line_error(capsys, "at least 32px")


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"soat {soat.__version__}"


# ---- the bench ---------------------------------------------------------------------------------
def test_bench_runs_on_cpu_and_writes_json_and_chart(tmp_path, capsys):
    argv = ["bench", "--size", "8", "--channel-multiplier", "1", "--device", "cpu", "--dtypes", "fp32,bf16",
            "--batches", "1,2", "--tasks", "generate,blend,panorama_stream", "--warmup", "1", "--iters", "2",
            "-o", str(tmp_path)]
    assert main(argv) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    rows = data["results"]
    assert len(rows) == 2 * 3 * 2
    assert {r["config"] for r in rows} == {"torch-fp32", "fast-bf16"}  # --backends auto: fast for bf16
    bf16 = [r for r in rows if r["config"] == "fast-bf16"]
    assert all(r["ratio_to_fp32"] > 0 and r["rel_err"] < 0.05 and r["psnr_db"] > 30 for r in bf16)
    assert data["meta"]["device"].startswith("CPU")
    with Image.open(tmp_path / "chart.png") as im:  # matplotlib is a test dependency
        assert im.size[0] > 800 and im.size[1] > 600
    out = capsys.readouterr().out
    assert out.index("soat bench on CPU") < out.index("ETA") < out.index("\ngenerate ")
    assert "fast-bf16" in out and "tasks:   generate, blend, panorama_stream" in out
    assert sorted(os.listdir(tmp_path)) == ["chart.png", "results.json"]
    assert main(argv) == 2  # results there: --force to replace


def test_bench_cpu_defaults_are_small(tmp_path, monkeypatch):
    seen = {}

    def fake_suite(source, size, cm, device, configs, tasks, batches, warmup, iters, out, baseline=True, peers=False,
                   exports=None):
        seen.update(size=size, dtypes={c.dtype for c in configs}, warmup=warmup, iters=iters, batches=batches,
                    exports=exports)
    monkeypatch.setattr("soat.bench.suite.run_suite", fake_suite)
    assert main(["bench", "--device", "cpu", "-o", str(tmp_path / "b")]) == 0
    assert seen["dtypes"] == {"fp32"} and seen["size"] <= 64 and seen["iters"] <= 5 and max(seen["batches"]) <= 4
    assert seen["exports"] == {}


@pytest.mark.parametrize("flag", ["--cuda-graphs", "--graphs"])
def test_bench_cuda_graphs_flag_and_its_deprecated_old_name(tmp_path, monkeypatch, capsys, flag):
    seen = {}
    monkeypatch.setattr("soat.bench.suite.run_suite", lambda source, size, cm, device, configs, *a, **k:
                        seen.update(modes={c.cuda_graphs for c in configs}))
    assert main(["bench", "--device", "cpu", flag, "off", "-o", str(tmp_path / "b")]) == 0
    assert seen["modes"] == {False}
    notices = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert notices == ([] if flag == "--cuda-graphs" else ["soat bench: --graphs is deprecated; use --cuda-graphs"])
    assert main(["bench", "--device", "cpu", flag, "on", "-o", str(tmp_path / "c")]) == 2
    assert "--cuda-graphs needs --device cuda" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["aoti"], ["aoti=/no/such/folder"], ["tensorrt=."], ["torch=."],
                                   ["aoti=.", "aoti=."]])
def test_bench_export_flag_errors(capsys, tmp_path, flags):
    argv = [part for flag in flags for part in ("--export", flag)]
    assert main(["bench", "--device", "cpu", "--backends", "torch,aoti", *argv, "-o", str(tmp_path / "b")]) == 2
    assert "--export" in capsys.readouterr().err


def test_bench_help_names_the_tasks(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    from soat.bench.suite import TASKS
    assert all(t in " ".join(out.split()) for t in TASKS)


# ---- user mistakes: one line, exit 2, before loading -------------------------------------------
@pytest.mark.parametrize("argv, says", [
    (["generate", "--seeds", "99999999999999999999"], "too large"),
    (["generate", "--seeds", "5-1,3"], "runs backwards"),
    (["generate", "--seeds", "-1"], "not a seed"),
    (["generate", "--seeds", "a-b"], "not a seed"),
    (["generate", "--size", "0"], "--size"),
    (["generate", "--dtype", "fp64"], "--dtype"),
    (["generate", "--backend", "tf"], "--backend"),
    (["generate", "--device", "tpu"], "not a device"),
    (["generate", "--channel-multiplier", "3"], "--channel-multiplier"),
    (["generate", "--truncation", "nan"], "finite"),
    (["generate", "--checkpoint", "random:99999999999999999999999"], "seed of the random model"),
    (["generate", "--checkpoint", "missing.pt"], "checkpoint not found"),
    (["generate", "--checkpoint", "random:abc"], "neither a file nor the random model, which is written random or "
                                                 "random:SEED"),
    (["generate", "--checkpoint", "Random:3"], "e.g. random:3"),
    (["info", "--checkpoint", "random-3"], "e.g. random:3"),
    (["generate", "-o", "x.png"], "folder"),
    (["blend", "--seeds", "1"], "exactly 2 seeds"),
    (["blend", "--seeds", "1-3"], "exactly 2 seeds"),
    (["panorama", "--seeds", "1,2"], "exactly 1 seed"),
    (["panorama", "--n", "100000"], "2 to 64"),
    (["panorama", "--n", "1"], "2 to 64"),
    (["blend", "-o", "out"], "ending in .png"),
    (["blend", "-o", "out.xyz"], "ending in .png"),
    (["blend", "-o", "nofolder/x.png"], "does not exist"),
    (["bbox", "--box", "0", "0", "256", "256", "--size", "64"], "larger than the 64x64"),
    (["bbox", "--box", "30", "30", "0", "4", "--size", "32"], "zero or negative size"),
    (["swap", "--boxes", "0", "0", "16", "16", "40", "0", "16", "16", "--size", "32"], "leaves the image"),
    (["translate"], "--checkpoint2"),
    (["convert", "-o", "x.pt", "--checkpoint", "random"], ".safetensors"),
    (["invert", "img.png", "-o", "codes.png"], ".pt"),
    (["bench", "--tasks", "generate,nope"], "nope"),
    (["bench", "--dtypes", "fp64"], "fp64"),
    (["bench", "--batches", "0"], "batch sizes"),
    (["frobnicate"], "invalid choice"),
    (["generat"], "invalid choice: 'generat'; did you mean 'generate'?"),
    (["blend", "--dtype", "fp61"], "did you mean 'fp16'?"),
    ([], "required"),
])
def test_user_errors_are_one_line_and_status_2(argv, says, capsys, tmp_path, monkeypatch, no_load):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    one_line_error(capsys, says)


def test_existing_outputs_need_force(tmp_path, capsys, monkeypatch, no_load):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blend.png").write_bytes(b"x")
    assert main(["blend"]) == 2
    one_line_error(capsys, "blend.png exists", "--force")
    (tmp_path / "folder.png").mkdir()
    assert main(["blend", "-o", "folder.png"]) == 2
    one_line_error(capsys, "is a folder")
    (tmp_path / "file").write_bytes(b"x")
    assert main(["generate", "-o", "file"]) == 2
    one_line_error(capsys, "is a file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_folder_is_refused(tmp_path, capsys, no_load):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert main(["blend", "-o", str(ro / "x.png")]) == 2
    one_line_error(capsys, "not writable")


def test_errors_after_loading_are_one_line_too(capsys, tmp_path):
    assert main(["generate", "--checkpoint", str(tmp_path / "missing.pt"), "-o", str(tmp_path)]) == 2
    one_line_error(capsys, "checkpoint not found")


def test_serve_without_its_extra_says_how_to_add_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn fails as where it is not installed
    assert main(["serve"]) == 2
    one_line_error(capsys, "soat serve needs the serve extra (uvicorn is missing)", "pip install -e '.[serve]'")


def test_install_hint_fits_how_soat_was_installed(monkeypatch):
    from soat.errors import install_hint
    assert install_hint("serve").endswith("pip install -e '.[serve]'")  # here: an editable install of a checkout

    class Wheel:
        def read_text(self, name):
            return None  # a wheel's metadata has no direct_url.json
    monkeypatch.setattr("importlib.metadata.distributions", lambda name: [Wheel()])
    assert install_hint("serve") == "pip install 'soat[serve]'"


def test_invert_on_the_fast_path_with_its_warning_as_one_line(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(img)
    argv = ["invert", str(img), "-o", str(tmp_path / "c.pt"), "--checkpoint", "random:8", *TINY, "--steps", "2",
            "--backend", "fast", "--dtype", "bf16"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "LPIPS is off" in line]  # 8 px: too small for LPIPS
    assert len(warned) == 1 and warned[0].startswith("soat: warning: LPIPS is off") and "UserWarning" not in err
    codes = soat.load_codes(tmp_path / "c.pt", soat.load("random:8", size=8, channel_multiplier=1))
    assert codes.shape == (1, 2560) and torch.equal(codes, codes.bfloat16().float())  # fitted in bf16
    assert main([*argv[:-4], "--backend", "onnxruntime", "--force"]) == 2
    one_line_error(capsys, "invalid choice: 'onnxruntime'")


def test_models_path_says_where_a_file_goes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SOAT_CACHE_DIR", str(tmp_path))
    assert main(["models", "--path", "soat-church"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'models' / 'soat-church.pt'}\n"
    assert main(["models"]) == 0
    assert "soat models --path NAME" in capsys.readouterr().out
    assert main(["models", "--path", "soat-chruch"]) == 2
    one_line_error(capsys, "'soat-chruch' is neither a model name")


def test_offline_flag_lasts_for_the_command(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("SOAT_OFFLINE", raising=False)
    monkeypatch.setenv("SOAT_CACHE_DIR", str(tmp_path))  # nothing cached: offline must refuse
    assert main(["info", "--checkpoint", "soat-church", "--offline"]) == 2
    one_line_error(capsys, "soat-church is not in the cache and SOAT_OFFLINE=1 (--offline)", "soat-church.pt")
    assert "SOAT_OFFLINE" not in os.environ


# ---- the parser's contract ---------------------------------------------------------------------
def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


MINE = ("generate", "info", "models", "blend", "merge", "panorama", "expand", "bbox", "swap", "translate",
        "shift", "demo", "invert", "convert", "bench")


def test_every_command_and_flag_has_help():
    subs = subparsers()
    missing = []
    for name, p in subs.items():
        if not p.description:
            missing.append(name)
        missing += [f"{name} {a.dest}" for a in p._actions if not a.help]
    assert missing == []


def test_enumerated_options_have_choices_and_one_seed_syntax():
    for name in MINE:
        p = subparsers()[name]
        actions = {s: a for a in p._actions for s in a.option_strings}
        assert "--seed" not in actions, name
        assert "--checkpoint" in actions or name == "models", name
        if "--dtype" in actions:
            assert set(actions["--dtype"].choices) == {"fp32", "fp16", "bf16"}, name
        if "--backend" in actions:  # inversion needs gradients: the differentiable backends of the table
            differentiable = (AUTO, *(b.name for b in BACKENDS if b.differentiable))
            want = differentiable if name == "invert" else BACKEND_CHOICES
            assert tuple(actions["--backend"].choices) == want, name
        if "--channel-multiplier" in actions:
            assert list(actions["--channel-multiplier"].choices) == [1, 2], name
        if "--size" in actions:
            assert 0 not in actions["--size"].choices, name


TASK_SEEDS = {"blend": 2, "merge": 2, "bbox": 2, "swap": 2, "translate": 2, "panorama": 1, "expand": 1, "shift": 1}


@pytest.mark.parametrize("name", list(TASK_SEEDS))
def test_seed_examples_in_help_fit_the_task(name):
    """Every example a task's --seeds help gives is a valid --seeds for it (two seeds only for two-image tasks)."""
    action = next(a for a in subparsers()[name]._actions if "--seeds" in a.option_strings)
    examples = re.search(r"e\.g\. (.*?);", action.help).group(1).split(" or ")
    assert examples and all(len(parse_seeds(e)) == TASK_SEEDS[name] for e in examples), action.help


@pytest.mark.parametrize("text, seeds", [("0-3,7", [0, 1, 2, 3, 7]), ("5", [5]), ("4294967295", [4294967295])])
def test_parse_seeds(text, seeds):
    assert list(parse_seeds(text)) == seeds


def test_parse_seeds_counts_without_building_a_list():
    assert len(parse_seeds("0-4294967295")) == 2 ** 32


def test_parse_seeds_rejects_junk():
    for text in ("a-b", "", "1,,2", "3-", "4294967296"):
        with pytest.raises(SoatError):
            parse_seeds(text)


# ---- save_png ----------------------------------------------------------------------------------
def test_save_png_refuses_other_formats_and_nan(tmp_path):
    img = torch.zeros(1, 3, 4, 4)
    with pytest.raises(SoatError, match=r"\.png"):
        soat.save_png(img, tmp_path / "x.jpg")
    with pytest.raises(SoatError, match="NaN"):
        soat.save_png(img * float("nan"), tmp_path / "x.png")
    assert os.listdir(tmp_path) == []
    assert soat.save_png(torch.zeros(2, 3, 4, 4), tmp_path / "y.png") == [str(tmp_path / "y_0.png"),
                                                                          str(tmp_path / "y_1.png")]
    assert oct((tmp_path / "y_0.png").stat().st_mode & 0o777) != oct(0o600)


def test_save_png_interrupted_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    soat.save_png(torch.zeros(1, 3, 4, 4), path)
    before = path.read_bytes()

    def broken_save(self, fp, *a, **k):
        open(fp, "wb").write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError):
        soat.save_png(torch.ones(1, 3, 4, 4), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["x.png"]
