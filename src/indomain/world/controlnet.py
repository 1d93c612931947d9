"""A small ControlNet for the emoji world's prior: edge-map control at 32 px, and its score.

    OMP_NUM_THREADS=1 indomain world train-controlnet --out outputs/emoji-controlnet-run --steps 1600 --batch 32 --lr 4e-4

Control: `edge_map` of an emoji render (rule below), white edges on black, RGB. Training data: the *seen* emoji
(`split_emoji(list_emoji(), seed=0)[0]`) rendered in the prior's own styles, Noto and Twemoji, at 32 px; OpenMoji
is never used. Model: `ControlNetModel.from_unet(prior_unet)` with a 3-level conditioning embedding (16, 32, 64)
so it downsamples 32 -> 8 like the prior's VAE. Only the ControlNet trains; the prior UNet is frozen. Loss: plain
epsilon MSE of the prior UNet with the ControlNet's residuals, text = the emoji name through the prior's own MiniLM
(cached), 10% of captions replaced by the empty prompt (the prior's unconditional branch gets residuals too).
Resumable: rerun the same command; a checkpoint is written every ``--checkpoint-every`` steps and the fp16
safetensors export (``out/controlnet``) is refreshed with it.

Edge rule (`edge_map`): grayscale ``L = (299 R + 587 G + 114 B) / 1000 / 255`` (PIL's "L"), 3x3 Sobel with edge
replication, magnitude ``sqrt(gx^2 + gy^2)``, edge where magnitude >= 0.5 (a unit step gives 4, so a local
contrast of about 1/8 of full range). Score (`edge_f1`): precision = share of the generated image's edge pixels
within 1 px (3x3 neighbourhood) of a control edge pixel, recall = share of control edge pixels within 1 px of a
generated edge pixel, F1 = 2PR / (P + R) (0 when both are 0).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import PIL.Image

from ..outputs import to_json

EDGE_THRESHOLD = 0.5


def edge_map(image: PIL.Image.Image) -> np.ndarray:
    """Binary edge map (H, W) bool of an RGB image, by the rule in the module docstring."""
    lum = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    p = np.pad(lum, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.sqrt(gx**2 + gy**2) >= EDGE_THRESHOLD


def control_image(image: PIL.Image.Image) -> PIL.Image.Image:
    """The ControlNet's input for ``image``: its edge map, white on black, RGB."""
    return PIL.Image.fromarray((edge_map(image) * 255).astype(np.uint8)).convert("RGB")


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([p[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


def edge_f1(control: np.ndarray | PIL.Image.Image, generated: PIL.Image.Image) -> float:
    """Edge F1 with 1 px tolerance between a control edge map (bool array or its `control_image`) and the edges of
    ``generated`` (resized to the control's size if needed)."""
    if isinstance(control, PIL.Image.Image):
        control = np.asarray(control.convert("L")) > 127
    if generated.size != (control.shape[1], control.shape[0]):
        generated = generated.resize((control.shape[1], control.shape[0]), PIL.Image.Resampling.BICUBIC)
    gen = edge_map(generated)
    precision = float((gen & _dilate(control)).sum() / gen.sum()) if gen.sum() else 0.0
    recall = float((control & _dilate(gen)).sum() / control.sum()) if control.sum() else 0.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def build_controlnet(prior_unet):
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(prior_unet, conditioning_embedding_out_channels=(16, 32, 64))


def _data(prior_dir: Path, seed: int):
    """Seen emoji in Noto and Twemoji: VAE latent posteriors (scaled), control images, names."""
    import torch

    from .prior import PRIOR_STYLES, open_vae
    from .render import list_emoji, render, split_emoji

    seen, _ = split_emoji(list_emoji(), seed=seed)
    vae = open_vae(prior_dir / "vae")
    pixels, controls, names = [], [], []
    for e in seen:
        for style in PRIOR_STYLES:
            im = render(e, style, 32)
            pixels.append(torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1)
            controls.append(torch.from_numpy(edge_map(im).astype(np.float32))[None].expand(3, -1, -1))
            names.append(e.name)
    x = torch.stack(pixels)
    s = vae.config.scaling_factor
    with torch.no_grad():
        params = torch.cat([vae.encode(x[i : i + 256].float()).latent_dist.parameters for i in range(0, len(x), 256)])
    latents = torch.cat([params[:, :4] * s, params[:, 4:] + 2 * math.log(s)], 1)
    return latents, torch.stack(controls).contiguous(), names


def train(out: Path, steps: int, batch: int = 32, lr: float = 4e-4, checkpoint_every: int = 100, seed: int = 0,
          caption_dropout: float = 0.1) -> Path:
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from ..loading import load_model
    from .prior import emoji_prior_dir, encode_names, load_resume_state, save_resume_state

    out.mkdir(parents=True, exist_ok=True)
    prior_dir = emoji_prior_dir()
    data_file = out / "data.pt"
    if data_file.is_file():
        d = load_resume_state(data_file)
        latents, controls, text, null = d["latents"], d["controls"], d["text"], d["null"]
    else:
        latents, controls, names = _data(prior_dir, seed)
        text, null = encode_names(names)
        save_resume_state(data_file, latents=latents, controls=controls, text=text, null=null)
    unet = load_model(UNet2DConditionModel, prior_dir / "unet", flag="the emoji prior's UNet").float().eval().requires_grad_(False)
    torch.manual_seed(seed)
    cn = build_controlnet(unet).train()
    opt = torch.optim.AdamW(cn.parameters(), lr=lr, weight_decay=1e-2)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    step, state_file = 0, out / "state.pt"
    if state_file.is_file():
        st = load_resume_state(state_file)
        cn.load_state_dict(st["model"]), opt.load_state_dict(st["opt"])
        step = st["step"]
    log = (out / "log.jsonl").open("a")
    t0, losses = time.time(), []
    while step < steps:
        gen = torch.Generator().manual_seed(seed * 104729 + step)
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        mean, logvar = latents[idx].chunk(2, 1)
        z0 = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
        emb = text[idx].clone()
        emb[torch.rand(batch, generator=gen) < caption_dropout] = null[0]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        xt = sched.add_noise(z0, noise, t)
        down, mid = cn(xt, t, encoder_hidden_states=emb, controlnet_cond=controls[idx], return_dict=False)
        pred = unet(xt, t, emb, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(cn.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        step += 1
        losses.append(loss.item())
        if step % checkpoint_every == 0 or step == steps:
            elapsed = time.time() - t0
            log.write(to_json({"step": step, "loss": float(np.mean(losses)), "s_per_step": elapsed / len(losses)}) + "\n")
            log.flush()
            print(f"step {step} loss {np.mean(losses):.4f} {elapsed / len(losses):.2f}s/step", flush=True)
            t0, losses = time.time(), []
            save_resume_state(state_file, model=cn.state_dict(), opt=opt.state_dict(), step=step)
            export(cn, out / "controlnet")
    return out / "controlnet"


def export(cn, target: Path) -> None:
    import copy

    import torch

    from ..outputs import atomic_path

    with atomic_path(target) as tmp:
        copy.deepcopy(cn).to(torch.float16).save_pretrained(tmp)
