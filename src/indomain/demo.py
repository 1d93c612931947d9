"""`indomain demo`: the whole workflow end to end, offline, on a CPU, in a couple of minutes.

Until the emoji-world prior ships (issue "The emoji world"), the prior here is a *tiny Stable-Diffusion-shaped
model with random weights*: the demo shows the mechanics (render a domain, train a null-text domain model
with the real trainer, sample with guidance-decoupled sampling, write grids and a record of every setting),
not image quality.
"""

from __future__ import annotations

import argparse
import html
import time
from pathlib import Path

DEFAULTS = {"num_images": 48, "resolution": 32, "steps": 60, "batch_size": 8, "sample_steps": 20, "seed": 0}


def run_demo(out: Path, num_images: int, resolution: int, steps: int, batch_size: int, sample_steps: int, seed: int) -> Path:
    """Run the demo into ``out``; returns the report path."""
    import torch

    from .outputs import make_grid, write_record
    from .pipeline import InDomainPipeline
    from .testing import save_tiny_prior
    from .train import TrainConfig, train
    from .world.render import list_emoji, render, split_emoji

    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    print("[1/4] rendering the domain (OpenMoji, seen split only)")
    seen, held_out = split_emoji(list_emoji(), seed=seed)
    domain_dir = out / "domain_images"
    domain_dir.mkdir(exist_ok=True)
    for emoji in seen[:: max(1, len(seen) // num_images)][:num_images]:
        render(emoji, "openmoji", size=resolution).save(domain_dir / f"{emoji.codepoint}.png")

    print("[2/4] building the prior (tiny SD-shaped model, random weights)")
    prior = out / "prior"
    if not (prior / "model_index.json").is_file():
        save_tiny_prior(prior, seed=seed)

    print("[3/4] training the null-text domain model")
    model_dir = out / "domain_model"
    config = TrainConfig(
        prior=str(prior), images=str(domain_dir), output=str(model_dir), resolution=resolution,
        train_batch_size=batch_size, max_train_steps=steps, learning_rate=1e-3, ema_decay=0.99,
        checkpointing_steps=max(steps // 2, 1), checkpoints_total_limit=1, seed=seed, overwrite=True,
    )
    train(config)

    print("[4/4] sampling")
    pipe = InDomainPipeline.from_pretrained(prior, domain_unet=model_dir)
    settings = {
        "unconditional in-domain (w_d=2.5)": dict(prompt=None, domain_guidance_scale=2.5),
        "domain model alone (w_d=1)": dict(prompt=None, domain_guidance_scale=1.0),
        f"in-domain + held-out prompt '{held_out[0].name}' (w_d=2.5, w_c=2.5)": dict(prompt=held_out[0].name, domain_guidance_scale=2.5, guidance_scale=2.5),
        "prior alone (w_d=0)": dict(prompt=None, domain_guidance_scale=0.0),
    }
    rows = []
    for i, (title, kw) in enumerate(settings.items()):
        images = pipe(num_images_per_prompt=8, num_inference_steps=sample_steps,
                      generator=[torch.Generator().manual_seed(seed + k) for k in range(8)], **kw).images
        name = f"grid_{i}.png"
        make_grid([im.resize((64, 64)) for im in images], ncols=8).save(out / name)
        rows.append((title, name))
    make_grid([im.resize((64, 64)) for im in _load(domain_dir)][:8], ncols=8).save(out / "grid_domain.png")
    rows.insert(0, ("real domain images (OpenMoji renders)", "grid_domain.png"))
    write_record(out / "settings.json", {"demo": DEFAULTS | dict(num_images=num_images, resolution=resolution, steps=steps,
                 batch_size=batch_size, sample_steps=sample_steps, seed=seed), "train": config.__dict__, "samples": settings},
                 seconds=round(time.time() - start, 1))
    report = out / "report.html"
    body = "".join(f"<h3>{html.escape(t)}</h3><img src='{n}'>" for t, n in rows)
    report.write_text(
        "<html><head><meta charset='utf-8'><title>indomain demo</title></head><body>"
        "<h1>indomain demo</h1><p>Tiny random-weight prior: this shows the workflow, not image quality. "
        f"Settings in <a href='settings.json'>settings.json</a>. Took {time.time() - start:.0f} s.</p>{body}</body></html>"
    )
    print(f"report: {report.resolve()}")
    return report


def _load(folder: Path) -> list:
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo (offline, CPU, minutes)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--num-images", type=int, default=DEFAULTS["num_images"], help="domain images to render (default: %(default)s)")
    p.add_argument("--resolution", type=int, default=DEFAULTS["resolution"], help="image size in pixels (default: %(default)s)")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="training steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="training batch size (default: %(default)s)")
    p.add_argument("--sample-steps", type=int, default=DEFAULTS["sample_steps"], help="sampler steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed (default: %(default)s)")
    p.set_defaults(func=lambda a: run_demo(Path(a.out), a.num_images, a.resolution, a.steps, a.batch_size, a.sample_steps, a.seed) and 0)
