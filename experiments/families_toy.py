"""Does the method work on every family? A two-style toy world for SD, SDXL and SD3 priors.

    python experiments/families_toy.py [--families sd sdxl sd3] [--prior-steps 1500] [--domain-steps 300] [--n 48]

The world: 32 px images of a red or a blue disc on white (the *control*, named in the caption "red" / "blue"), plain
or with a black outline (the *style*, never named; shapes the shipped emoji VAE reproduces). Per family:

1. a tiny text-to-image prior of that family (random init, the shipped emoji VAE) is trained on both styles with
   captions, so for each prompt it draws plain and outlined discs about equally;
2. `indomain train` learns a null-text domain model from outlined images only, without captions;
3. samples for the prompts "red" and "blue" with w_c = 3 and w_d in {0, 1, 3} are scored with two fixed statistics
   (`score`): *style* — outlined; *control* — the disc has the prompted colour.

The method works on a family if domain guidance raises the outlined share well above the prior's while control stays
near the prior's. Writes a table and an image grid per family into --out (default runs/families_toy).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from indomain import InDomainAutoPipeline
from indomain.autopipeline import pipeline_class
from indomain.families import FAMILIES, call_denoiser, denoiser_inputs
from indomain.outputs import make_grid
from indomain.train import TrainConfig, noise_and_target, train

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}
STYLES = ("plain", "outlined")  # the domain is "outlined": a black ring around the disc, as OpenMoji draws


def draw(colour: str, style: str, rng: np.random.Generator) -> Image.Image:
    """One toy image: a disc of ``colour`` at a random place and size on white, with a black outline if ``style``
    is "outlined"."""
    y, x = np.mgrid[:32, :32]
    cy, cx, r = rng.uniform(11, 21), rng.uniform(11, 21), rng.uniform(6, 9)
    d = np.hypot(y - cy, x - cx)
    img = np.full((32, 32, 3), 255.0, np.float32)
    disc = np.clip(r + 0.5 - d, 0, 1)[..., None]  # antialiased edge
    img = img * (1 - disc) + np.array(COLOURS[colour], np.float32) * disc
    if style == "outlined":
        ring = (np.clip(r + 2.0 - d, 0, 1) * np.clip(d - (r - 1.0), 0, 1))[..., None]
        img = img * (1 - ring)
    return Image.fromarray(img.round().astype(np.uint8))


def score(images: np.ndarray, colours: list[str]) -> tuple[float, float]:
    """(outlined share, control accuracy) of images (N, H, W, 3) in [0, 1]: outlined when over 3% of the pixels are
    dark (every channel below 0.5; outlined renders after a VAE round trip: 8-14%, plain ones: 0); control when
    the sign of mean(R − B) matches the prompt (R − B is 0 on white and black, so only the disc counts)."""
    dark = (images.max(axis=-1) < 0.5).mean(axis=(1, 2)) > 0.03
    red = (images[..., 0] - images[..., 2]).mean(axis=(1, 2)) > 0
    hits = [r == (c == "red") for r, c in zip(red, colours)]
    return float(dark.mean()), float(np.mean(hits))


def tiny_prior(family: str, vae) -> dict:
    """The family's tiny components at 8x8 latents (the emoji VAE's factor 4 at 32 px)."""
    from indomain.testing import tiny_sd3_components, tiny_sd_components, tiny_sdxl_components, tiny_unet

    if family == "sd":
        parts = tiny_sd_components()
        parts["unet"] = tiny_unet(sample_size=8)
    elif family == "sdxl":
        parts = tiny_sdxl_components()
        parts["unet"] = tiny_unet(cross_attention_dim=64, sample_size=8, addition_embed_type="text_time",
                                  addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
    else:
        from diffusers import SD3Transformer2DModel

        parts = tiny_sd3_components()
        torch.manual_seed(0)
        parts["transformer"] = SD3Transformer2DModel(
            sample_size=8, patch_size=1, in_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=4,
            joint_attention_dim=64, caption_projection_dim=64, pooled_projection_dim=64, out_channels=4)
        vae.register_to_config(shift_factor=0.0)
    parts["vae"] = vae
    return parts


def train_prior(family: str, parts: dict, steps: int, folder: Path, log: list) -> None:
    """Text-to-image training of the tiny prior on both styles (10% empty captions, for CFG)."""
    from diffusers import DDPMScheduler

    fam = FAMILIES[family]
    rng = np.random.default_rng(0)
    images = [(c, draw(c, s, rng)) for _ in range(128) for c in COLOURS for s in STYLES]
    pixels = torch.stack([torch.from_numpy(np.asarray(im, np.float32) / 127.5 - 1).permute(2, 0, 1) for _, im in images])
    with torch.no_grad():
        latents = parts["vae"].encode(pixels).latent_dist.mean * parts["vae"].config.scaling_factor
        if fam.objective == "flow":
            latents = (latents / parts["vae"].config.scaling_factor - parts["vae"].config.shift_factor) * parts["vae"].config.scaling_factor
        pipe = pipeline_class(fam)(**parts)
        texts = {c: pipe.encode_text([c], "cpu") for c in ("", *COLOURS)}
    denoiser = parts[fam.denoiser]
    sched = parts["scheduler"] if fam.objective == "flow" else DDPMScheduler.from_config(parts["scheduler"].config)
    denoiser.train()
    opt = torch.optim.AdamW(denoiser.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    time_ids = torch.tensor([[32.0, 32, 0, 0, 32, 32]])
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(images), (32,), generator=gen)
        caps = ["" if torch.rand(1, generator=gen) < 0.1 else images[i][0] for i in idx.tolist()]
        x0 = latents[idx]
        noisy, t, target = noise_and_target(fam, sched, x0, torch.randn(x0.shape, generator=gen), gen)
        text = {k: torch.cat([(texts[c] if isinstance(texts[c], torch.Tensor) else texts[c][k]) for c in caps])
                for k in (("text", "pooled") if isinstance(texts[""], dict) else ("t",))}
        inputs = denoiser_inputs(fam, text if "text" in text else text["t"], len(caps), time_ids)  # time ids: SDXL's
        pred = call_denoiser(fam, denoiser, noisy, t, inputs)
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  {family} prior step {step} loss {loss.item():.4f}", flush=True)
    denoiser.eval()
    log.append({"family": family, "prior_steps": steps, "prior_final_loss": round(loss.item(), 4),
                "prior_seconds": round(time.time() - start, 1)})
    cls = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline"}[family]
    import diffusers

    extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False} if family == "sd" else (
        {"add_watermarker": False} if family == "sdxl" else {})
    getattr(diffusers, cls)(**parts, **extra).save_pretrained(folder, safe_serialization=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", default=["sd", "sdxl", "sd3"])
    ap.add_argument("--prior-steps", type=int, default=1500)
    ap.add_argument("--domain-steps", type=int, default=300)
    ap.add_argument("--n", type=int, default=48, help="images per prompt and setting")
    ap.add_argument("--out", default="runs/families_toy")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from diffusers import AutoencoderKL

    from indomain.world.render import shipped_weights

    rows, log = [], []
    for family in args.families:
        vae = AutoencoderKL.from_pretrained(shipped_weights("emoji-prior") / "vae")
        torch.manual_seed(0)
        prior = out / f"{family}-prior"
        train_prior(family, tiny_prior(family, vae), args.prior_steps, prior, log)
        domain_images = out / "outlined-images"
        if not domain_images.is_dir():
            domain_images.mkdir()
            rng = np.random.default_rng(1)
            for i in range(200):
                draw(("red", "blue")[i % 2], "outlined", rng).save(domain_images / f"{i:03d}.png")
        domain = train(TrainConfig(prior=str(prior), images=str(domain_images), output=str(out / f"{family}-domain"),
                                   resolution=32, max_train_steps=args.domain_steps, learning_rate=1e-3,
                                   checkpointing_steps=args.domain_steps, overwrite=True, use_ema=False))
        pipe = InDomainAutoPipeline.from_pretrained(prior, domain_unet=domain)
        pipe.set_progress_bar_config(disable=True)
        grids = []
        for w_d in (0.0, 1.0, 3.0):
            imgs, colours = [], []
            for k, colour in enumerate(COLOURS):
                gens = [torch.Generator().manual_seed(1000 * k + i) for i in range(args.n)]
                imgs.append(pipe(colour, num_images_per_prompt=args.n, guidance_scale=3.0, domain_guidance_scale=w_d,
                                 num_inference_steps=20, generator=gens, output_type="np").images)
                colours += [colour] * args.n
            imgs = np.concatenate(imgs)
            outlined, control = score(imgs, colours)
            rows.append({"family": family, "w_d": w_d, "w_c": 3.0, "n": len(imgs), "outlined_share": round(outlined, 3),
                         "control": round(control, 3)})
            print(rows[-1], flush=True)
            grids += [Image.fromarray((im * 255).round().astype(np.uint8)) for im in np.concatenate(
                [imgs[:8], imgs[args.n:args.n + 8]])]
        make_grid(grids, ncols=16).save(out / f"{family}-grid.png")
    # the real renders of each style, for reference
    rng = np.random.default_rng(2)
    for style in STYLES:
        real = np.stack([np.asarray(draw(c, style, rng), np.float32) / 255 for c in COLOURS for _ in range(args.n)])
        outlined, control = score(real, [c for c in COLOURS for _ in range(args.n)])
        rows.append({"family": f"real {style}", "w_d": None, "w_c": None, "n": len(real), "outlined_share": outlined,
                     "control": control})
    (out / "results.json").write_text(json.dumps({"rows": rows, "training": log, "args": vars(args)}, indent=2))
    print("| family | w_d | outlined share (domain) | control |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['w_d']} | {r['outlined_share']:.3f} | {r['control']:.3f} |")


if __name__ == "__main__":
    main()
