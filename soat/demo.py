"""``soat demo``: every task once, one PNG each, and an index.html gallery.

The default model is the embedded random-weights generator: its images are colored noise that
shows what each task does to the picture's layout, not what a trained model draws. The gallery
says so; ``--checkpoint NAME`` (``soat models``) runs the same tasks on a real model."""

from __future__ import annotations

import html
import os
from typing import Callable

import torch
from tqdm import tqdm

import soat
from soat.runtime.files import atomic_output
from soat.runtime.images import hstack, save_png


def _styles(G, seed: int) -> list[torch.Tensor]:
    z = torch.randn(1, G.config.style_dim, generator=torch.Generator().manual_seed(seed))
    return G.styles(z, truncation=0.7)


DEMO_NAMES = ("sources", "blend_horizontal", "blend_vertical", "merge_extension", "merge", "panorama",
              "expand_reflect", "blend_bbox", "patch_swap", "shift", "translate")


def demo_tasks(G, G2=None) -> list[tuple[str, str, Callable[[], torch.Tensor]]]:
    """``(name, caption, make_image)`` for every task, on the same two style draws (no translation
    without ``G2``)."""
    R = G.size
    a, b = _styles(G, 1), _styles(G, 2)
    box = (R // 4, R // 4, R // 2, R // 2)
    panorama = G.panorama_styles(4, seed=90)

    def expand() -> torch.Tensor:
        torch.manual_seed(0)
        return G.expand(a, mode="reflect")

    tasks = [
        ("sources", "The two source images (style draws 1 and 2), plain generation.",
         lambda: hstack([G.generate(a), G.generate(b)])),
        ("blend_horizontal", "Blend: both styles at every layer, a horizontal ramp (image 1 left, image 2 right).",
         lambda: G.blend(a, b, "horizontal")),
        ("blend_vertical", "Blend, vertical ramp (image 1 top, image 2 bottom).", lambda: G.blend(a, b, "vertical")),
        ("merge_extension", "Merge extension: a seamless R x 2R span from the two images.",
         lambda: G.merge_extension(a, b)),
        ("merge", "Merge: the same with a plain linear alpha.", lambda: G.merge(a, b)),
        ("panorama", "Panorama of 4 smoothed latents (the paper's sampler), spans stitched.",
         lambda: G.panorama(panorama, progress=False)),
        ("expand_reflect", "Expand from one image (image 1): features reflect-padded after 8x8, random noise.",
         expand),
        ("blend_bbox", f"Local transfer: image 2 inside the box {box} (Gaussian-blurred mask) over image 1.",
         lambda: G.blend_bbox(a, b, box)),
        ("patch_swap", "Patch swap at 16x16: top-left and bottom-right quarter regions exchanged with image 2.",
         lambda: G.patch_swap(a, b, ((0, 0, R // 2, R // 2), (R // 2, R // 2, R // 2, R // 2)))),
        ("shift", "Shift: the top-left patch of image 1 replicated onto two targets at 8-32 px layers.",
         lambda: hstack([G.generate(a), G.shift(a, (0, 0, R // 4, R // 4), [(R // 2, 0), (R // 4, R // 2)])])),
    ]
    if G2 is not None:
        a2, b2 = _styles(G2, 1), _styles(G2, 2)
        tasks.append(("translate", "Translation from generator 2 (left) through generator 1 (alpha 0.7 after layer 6).",
                      lambda: hstack([G2.generate(a2), soat.translate(G, G2, a2, b2, num_swap=6, alpha=0.7)])))
    return tasks


def write_index(out_dir: str, entries: list[tuple[str, str]], title: str, note: str = "") -> str:
    cards = "\n".join(
        f'<figure><img src="{html.escape(name)}.png" alt="{html.escape(name)}">'
        f"<figcaption><b>{html.escape(name)}</b>: {html.escape(caption)}</figcaption></figure>"
        for name, caption in entries)
    banner = f'<p class="note">{html.escape(note)}</p>' if note else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;background:#fafafa}}figure{{display:inline-block;margin:1em;
vertical-align:top;max-width:560px}}img{{max-width:100%;image-rendering:pixelated;border:1px solid #ccc}}
.note{{background:#fff3cd;border:1px solid #e0c36c;padding:.6em 1em;max-width:60em}}</style>
</head><body><h1>{html.escape(title)}</h1>
{banner}
{cards}
</body></html>
"""
    path = os.path.join(out_dir, "index.html")
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write(page)
    return path


RANDOM_NOTE = ("These images come from a generator with random weights (no training): colored noise that "
               "shows what each task does to an image's layout, not real pictures. Run `soat models` and "
               "`soat demo --checkpoint NAME` to see the same tasks on a trained model.")


def run_demo(out_dir: str, checkpoint: str = "random:0", checkpoint2: str | None = None, size: int | None = None,
             channel_multiplier: int | None = None, device: str = "cpu", dtype: str = "fp32") -> str:
    """Write one PNG per task and ``index.html`` into ``out_dir``; returns the index path.

    The translation example needs a second generator fine-tuned from the first: ``checkpoint2``,
    by default ``random:1`` when ``checkpoint`` is a random model (else it is left out)."""
    random_model = checkpoint.split(":")[0] == "random"
    if checkpoint2 is None and random_model:
        checkpoint2 = "random:1"
    os.makedirs(out_dir, exist_ok=True)
    kw = dict(size=size, channel_multiplier=channel_multiplier, device=device, dtype=dtype)
    G = soat.load(checkpoint, **kw)
    G2 = soat.load(checkpoint2, **kw) if checkpoint2 else None
    for model in [m for m in (G, G2) if m is not None]:
        model.mean_styles(progress=True)  # the tasks truncate: sigma_bar under its own bar, not the first task's
    entries = []
    with torch.no_grad():
        for name, caption, make in tqdm(demo_tasks(G, G2), desc="demo", unit="task"):
            save_png(make(), os.path.join(out_dir, f"{name}.png"))
            entries.append((name, caption))
    if random_model:
        title = f"SOAT demo: RANDOM WEIGHTS ({G.size}px, untrained), not a real model"
    else:
        title = f"SOAT demo: {checkpoint} ({G.size}px)"
    path = write_index(out_dir, entries, title, RANDOM_NOTE if random_model else "")
    print(f"wrote {len(entries)} images and {path}")
    return path
