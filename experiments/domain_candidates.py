"""Which derived styles can the 32-px emoji world and its VAE represent? (Choosing the extra domains.)

    python experiments/domain_candidates.py [--out outputs/domain_candidates]

Each candidate style (a base style of the world plus a pixel recipe) is drawn for the 276 held-out emoji and sent
through the emoji prior's VAE (encode to the latent mode, decode). Per candidate, for the real renders and their round
trip: the round trip's mean squared error (pixels in [0, 1]), `control_top1` with the evaluators' shipped galleries
(Noto, Twemoji, OpenMoji; chance 0.1), `control_domain_top1` against a gallery of the candidate's own renders of all
1,377 emoji, and the Fréchet distance to the candidate's renders of the 1,101 seen emoji. A style the VAE cannot
represent shows a large round-trip error and a large FD rise; a style the shipped galleries rate poorly even for real
renders needs the own-gallery control score. A strip of real renders over round trips is written per candidate.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def candidates() -> dict:
    """name -> (base style, recipe): the chosen domains of `indomain.world.domains` and the rejected ones."""
    import numpy as np
    from PIL import Image, ImageOps

    from indomain.world.domains import sepia, sticker

    def duotone(image):  # navy to peach
        g = np.asarray(image.convert("L"), dtype=np.float32)[..., None] / 255
        dark, light = np.array([30, 27, 90], np.float32), np.array([255, 214, 140], np.float32)
        return Image.fromarray((dark + (light - dark) * g).round().astype(np.uint8))

    def pastel(image):
        return Image.blend(image.convert("RGB"), Image.new("RGB", image.size, "white"), 0.45)

    return {
        "openmoji (the original domain)": ("openmoji", lambda im: im.convert("RGB")),
        "sepia (chosen)": ("twemoji", sepia),
        "sticker (chosen)": ("noto", sticker),
        "twemoji grayscale": ("twemoji", lambda im: im.convert("L").convert("RGB")),
        "noto pastel": ("noto", pastel),
        "twemoji posterised (2 bits)": ("twemoji", lambda im: ImageOps.posterize(im.convert("RGB"), 2)),
        "openmoji negative": ("openmoji", lambda im: ImageOps.invert(im.convert("RGB"))),
        "twemoji duotone (navy/peach)": ("twemoji", duotone),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/domain_candidates")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from indomain.world.prior import vae_round_trip_images as vae_round_trip
    from indomain.world.evaluators import load_evaluators, to_batch
    from indomain.world.prior import emoji_prior_dir
    from indomain.world.render import list_emoji, render, split_emoji

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = list_emoji()
    seen, held = split_emoji(world, seed=0)
    ev = load_evaluators()
    names = [e.name for e in held]
    targets = [ev.emoji_index(n) for n in names]
    cand = torch.from_numpy(ev.candidates(targets, 10, 0))
    vae = str(emoji_prior_dir() / "vae")
    print("| candidate | images | round-trip MSE | control_top1 | control_domain_top1 | FD to its seen renders |")
    print("|---|---|---|---|---|---|")
    for k, (name, (base, recipe)) in enumerate(candidates().items()):
        drawn = [recipe(render(e, base, 32)) for e in world]
        real = [drawn[i] for i in targets]
        trip = vae_round_trip(real, vae)
        gallery = ev.embed(drawn)
        reference = ev.features([drawn[ev.emoji_index(e)] for e in seen]).double()
        stats = reference.mean(0), torch.cov(reference.T)
        mse = float(((to_batch(trip) - to_batch(real)) ** 2).mean())
        for label, images in (("real", real), ("VAE round trip", trip)):
            emb = ev.embed(images)
            own = torch.einsum("nd,nkd->nk", emb, gallery[cand])
            own_top1 = float((own[:, 0] > own[:, 1:].amax(1)).float().mean())
            print(f"| {name} | {label} | {mse if label != 'real' else 0:.4f} | {ev.retrieval_top1(images, names):.3f} | "
                  f"{own_top1:.3f} | {ev.frechet_to_openmoji(images, stats):.2f} |", flush=True)
        strip = np.concatenate([np.concatenate([np.asarray(im) for im in row[:12]], 1) for row in (real, trip)], 0)
        Image.fromarray(strip).resize((strip.shape[1] * 3, strip.shape[0] * 3), Image.NEAREST).save(out / f"{k:02d}.png")


if __name__ == "__main__":
    main()
