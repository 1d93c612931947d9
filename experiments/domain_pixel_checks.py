"""Pixel-level checks of the derived domains' style, independent of the evaluators' feature space.

    python experiments/domain_pixel_checks.py outputs/benchmark-sepia outputs/benchmark-sticker

The evaluators were trained on Noto, Twemoji and OpenMoji only, so their FD to a derived style is a borrowed measure.
Each derived style is defined by a pixel recipe, which gives a direct test of it:

* ``sepia``: every pixel lies on the brown-to-cream ramp. *Off-ramp*: the mean distance (0-255 RGB units) of a pixel
  to that line segment; real sepia renders score 0 (up to rounding), colour emoji far more.
* ``sticker``: the drawing fits the central 5/8 of the canvas. *Ink outside*: the share of pixels outside that box that
  are not near-white (any channel below 235); real stickers score 0.

For every setting of the benchmark's held-out evaluation (both seeds, N = 192), plus the real renders and their VAE
round trip, the mean and its standard error over images.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def off_ramp(image: np.ndarray) -> float:
    """Mean distance of the pixels to the sepia ramp's segment, in RGB units."""
    from indomain.world.domains import _SEPIA_DARK, _SEPIA_LIGHT

    x = image.reshape(-1, 3).astype(np.float64)
    a, d = _SEPIA_DARK.astype(np.float64), (_SEPIA_LIGHT - _SEPIA_DARK).astype(np.float64)
    t = np.clip((x - a) @ d / (d @ d), 0, 1)
    return float(np.linalg.norm(x - (a + t[:, None] * d), axis=1).mean())


def ink_outside(image: np.ndarray) -> float:
    """Share of the pixels outside the central sticker box that are not near-white."""
    from indomain.world.domains import STICKER_SCALE

    side = image.shape[0]
    inner = round(side * STICKER_SCALE)
    lo = (side - inner) // 2
    mask = np.ones(image.shape[:2], bool)
    mask[lo : lo + inner, lo : lo + inner] = False
    return float((image[mask].min(axis=1) < 235).mean())


CHECKS = {"sepia": ("off-ramp (RGB units)", off_ramp), "sticker": ("ink outside the box", ink_outside)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benchmarks", nargs="+", help="finished `indomain world benchmark --domain sepia|sticker` folders")
    args = ap.parse_args()

    from PIL import Image

    from indomain.world.prior import vae_round_trip_images as vae_round_trip
    from indomain.world.domains import get_domain
    from indomain.world.render import evenly_spaced, list_emoji, split_emoji

    for folder in map(Path, args.benchmarks):
        record = json.loads((folder / "results.json").read_text())
        config = record["config"]
        label, check = CHECKS[config["domain"]]
        _, held = split_emoji(list_emoji(), seed=config["seed"])
        by_name = {e.name: e for e in held}
        prompts = evenly_spaced([e.name for e in held], config["num_prompts"])
        n = config["images_per_setting"]
        real = [get_domain(config["domain"]).render(by_name[prompts[i % len(prompts)]], config["resolution"])
                for i in range(n)]
        sets = {"real renders": real, "VAE round trip": vae_round_trip(real, str(Path(config["prior"]) / "vae"))}
        images = [folder / f"eval-held-out-seed{s}" / "images" for s in config["seeds"]]
        for setting in sorted(p.name for p in images[0].iterdir()):
            sets[setting] = [Image.open(p) for d in images for p in sorted((d / setting).glob("*.png"))]
        print(f"\n{config['domain']} (held-out prompts): {label}, mean ± SE\n")
        print(f"| setting | N | {label} |\n|---|---|---|")
        for name, ims in sets.items():
            values = np.array([check(np.asarray(im.convert("RGB"))) for im in ims])
            se = values.std(ddof=1) / math.sqrt(len(values))
            print(f"| {name} | {len(values)} | {values.mean():.3f} ± {se:.3f} |")


if __name__ == "__main__":
    main()
