"""The ``soat`` command line on a small random model: every task command, the demo, the bench, errors."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from soat.cli import main, parse_seeds
from soat.errors import SoatError

SMALL = ["--size", "32", "--channel-multiplier", "1"]


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_generate_writes_one_png_per_seed(tmp_path):
    assert main(["generate", *SMALL, "--seeds", "0-1,5", "-o", str(tmp_path)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["seed0000.png", "seed0001.png", "seed0005.png"]
    assert png_size(tmp_path / "seed0005.png") == (32, 32)


def test_info_prints_layout(capsys):
    assert main(["info", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "size: 32" in out and "channel_multiplier: 1" in out and "sigma entries: 11" in out


@pytest.mark.parametrize("argv, size", [
    (["blend", "--mode", "vertical"], (32, 32)),
    (["merge"], (64, 32)),
    (["merge", "--linear"], (64, 32)),
    (["panorama", "--n", "3"], (96, 32)),
    (["expand", "--mode", "vertical"], (32, 64)),
    (["bbox", "--box", "4", "4", "16", "12", "--pose-align"], (32, 32)),
    (["swap", "--boxes", "0", "0", "16", "16", "16", "16", "16", "16"], (32, 32)),
    (["shift", "--source", "0", "0", "8", "8", "--target", "16", "0", "--target", "8", "16"], (32, 32)),
    (["translate", "--checkpoint2", "random:1"], (32, 32)),
])
def test_task_commands_write_their_image(tmp_path, argv, size):
    out = tmp_path / "out.png"
    assert main([argv[0], *SMALL, *argv[1:], "-o", str(out)]) == 0
    assert png_size(out) == size


def test_demo_writes_gallery(tmp_path):
    assert main(["demo", "--size", "32", "--channel-multiplier", "1", "-o", str(tmp_path)]) == 0
    pngs = [f for f in os.listdir(tmp_path) if f.endswith(".png")]
    page = (tmp_path / "index.html").read_text()
    assert len(pngs) == 11
    assert all(f'src="{f}"' in page for f in pngs)


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
    assert (tmp_path / "chart.png").stat().st_size > 0  # matplotlib is a test dependency
    assert "fast-bf16" in capsys.readouterr().out


def test_user_errors_are_one_line_and_status_2(capsys, tmp_path):
    assert main(["generate", "--checkpoint", str(tmp_path / "missing.pt"), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("soat: error: checkpoint not found") and err.count("\n") == 1
    assert main(["bbox", *SMALL, "--box", "30", "30", "0", "4"]) == 2
    assert "zero or negative size" in capsys.readouterr().err


@pytest.mark.parametrize("text, seeds", [("0-3,7", [0, 1, 2, 3, 7]), ("5", [5])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


def test_parse_seeds_rejects_junk():
    with pytest.raises(SoatError, match="must be integers"):
        parse_seeds("a-b")
