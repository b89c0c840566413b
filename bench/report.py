"""What ``soat bench`` reports: one ``Result`` per timed row, the table, ``results.json`` and the chart."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field

import torch

import soat
from soat.runtime.files import atomic_output


@dataclass
class Result:
    task: str
    config: str
    batch: int
    p50_ms: float
    p99_ms: float
    img_per_s: float
    peak_mem_mb_per_img: float | None
    psnr_db: float | None = None
    rel_err: float | None = None
    ratio_to_fp32: float | None = None
    extra: dict = field(default_factory=dict)


def run_info(models: dict, source: str, warmup: int, iters: int) -> dict:
    """Where and how the suite ran: device, versions, model, repetitions."""
    G = next(iter(models.values()))
    return {"device": device_name(str(G.device)), "torch": torch.__version__, "soat": soat.__version__,
            "model": source, "size": G.size, "channel_multiplier": G.config.channel_multiplier,
            "python": platform.python_version(), "warmup": warmup, "iters": iters}


def write_json(results: list[Result], meta: dict, path: str) -> None:
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump({"meta": meta, "results": [asdict(r) for r in results]}, f, indent=1)


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def format_table(results: list[Result], meta: dict) -> str:
    lines = [f"{meta['device']} | {meta['size']}px cm{meta['channel_multiplier']} | torch {meta['torch']}",
             f"{'task':<16}{'config':<22}{'B':>4}{'p50 ms':>10}{'p99 ms':>10}{'img/s':>10}{'x fp32':>8}"
             f"{'PSNR dB':>9}{'rel err':>9}{'MB/img':>9}"]
    return "\n".join(lines + [format_row(r) for r in results])


def format_row(r: Result) -> str:
    ps = "" if r.psnr_db is None else ("inf" if math.isinf(r.psnr_db) else f"{r.psnr_db:.1f}")
    mem = "" if r.peak_mem_mb_per_img is None else f"{r.peak_mem_mb_per_img:.0f}"
    ratio = "" if r.ratio_to_fp32 is None else f"{r.ratio_to_fp32:.2f}"
    err = "" if r.rel_err is None else f"{r.rel_err:.1e}"
    return (f"{r.task:<16}{r.config:<22}{r.batch:>4}{r.p50_ms:>10.3f}{r.p99_ms:>10.3f}"
            f"{r.img_per_s:>10.1f}{ratio:>8}{ps:>9}{err:>9}{mem:>9}")


def _num(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def write_chart(results: list[Result], meta: dict, path: str, baseline: str) -> str | None:
    """One row per task: p50 latency (p99 as a whisker) and images/s against batch, one bar per config,
    linear axes, the value on every bar and the speed-up over the ``baseline`` config (the fp32 torch
    path) on the throughput bars."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return None
    if not results:
        return None
    tasks = list(dict.fromkeys(r.task for r in results))  # in the order they ran
    configs = list(dict.fromkeys(r.config for r in results))
    batches = sorted({r.batch for r in results})
    by = {(r.task, r.config, r.batch): r for r in results}
    width = 0.8 / len(configs)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(len(tasks), 2, squeeze=False,
                             figsize=(min(16.0, max(10.0, 1.1 * len(batches) * len(configs) + 5)), 2.9 * len(tasks) + 1.2))
    for row, task in enumerate(tasks):
        lat_ax, thr_ax = axes[row]
        for i, cfg in enumerate(configs):
            xs = [j + (i - (len(configs) - 1) / 2) * width for j in range(len(batches))]
            rows = [by.get((task, cfg, b)) for b in batches]
            p50 = [r.p50_ms if r else 0.0 for r in rows]
            p99 = [r.p99_ms if r else 0.0 for r in rows]
            color = colors[i % len(colors)]
            lat_ax.bar(xs, p99, width, color=color, alpha=0.35)  # p99 behind, light
            bars = lat_ax.bar(xs, p50, width, color=color, label=cfg)
            lat_ax.bar_label(lat_ax.containers[-2], labels=[f"{_num(a)}\n{_num(b)}" if a else ""
                                                            for a, b in zip(p50, p99)], fontsize=7, padding=2)
            ips = [r.img_per_s if r else 0.0 for r in rows]
            bars = thr_ax.bar(xs, ips, width, color=color, label=cfg)
            labels = []
            for r in rows:
                if r is None:
                    labels.append("")
                    continue
                text = _num(r.img_per_s)
                if r.ratio_to_fp32 is not None and r.config != baseline:
                    text += f"\n{r.ratio_to_fp32:.2f}x"
                labels.append(text)
            thr_ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
        for ax, ylabel, what in ((lat_ax, "ms per call", "latency, ms"), (thr_ax, "images/s", "throughput")):
            ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_title(f"{task}: {what}", fontsize=9, loc="left")
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            ax.margins(y=0.25)
            ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=7, loc="upper left", title="config", title_fontsize=7)
    dtypes = ", ".join(dict.fromkeys(c.split("-")[1] for c in configs))
    fig.suptitle(f"SOAT on {meta['device']}\nmodel {meta['model']} ({meta['size']}px, cm{meta['channel_multiplier']}), "
                 f"dtypes {dtypes}, torch {meta['torch']}, {meta['iters']} timed runs per bar\n"
                 "left: latency per call, p50 solid / p99 light (labels p50 over p99);  "
                 "right: images/s, Nx = speed-up over torch-fp32", fontsize=9)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
