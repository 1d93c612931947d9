"""Training throughput: the null-text domain model vs a conventional text-conditioned fine-tune.

    python benchmarks/train_throughput.py --preset cpu-small --batch 8            # CPU, small UNet
    python benchmarks/train_throughput.py --preset sd15 --batch 8 --precision bf16 # GPU, SD1.5 architecture

Each variant runs in its own subprocess, so each peak-memory reading is its own (CPU: peak RSS;
GPU: torch.cuda.max_memory_allocated). All weights are random; only speed and memory are measured.

Variants, at the same batch size and precision:
- ``baseline``: diffusers ``train_text_to_image.py`` style step: VAE-encode the pixels, run the text
  encoder on the caption, text-conditioned UNet forward/backward, AdamW step.
- ``cached``: the same text UNet, but latents come from the cache and the caption embedding is
  computed once (isolates the cache).
- ``ours``: cached latents + the null-text UNet (constant cross-attention, no text encoder), which
  is what ``indomain train`` runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def build(preset: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    if preset == "sd15":
        unet = UNet2DConditionModel()  # the defaults are the SD1.5 UNet
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77))
        pixels = 512
    elif preset == "cpu-small":
        unet = UNet2DConditionModel(sample_size=16, block_out_channels=(64, 128, 128), layers_per_block=1,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                    cross_attention_dim=256, attention_head_dim=8, norm_num_groups=32)
        vae = AutoencoderKL(block_out_channels=(32, 64, 128, 128), layers_per_block=2, latent_channels=4, norm_num_groups=32,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=256, intermediate_size=1024,
                                            num_attention_heads=4, num_hidden_layers=6, max_position_embeddings=77))
        pixels = 128
    else:
        raise SystemExit(f"unknown preset {preset!r}")
    return unet, vae, text, pixels


def run_variant(variant: str, preset: str, batch: int, steps: int, warmup: int, precision: str) -> dict:
    from diffusers import DDPMScheduler

    from indomain import NullTextUNet

    device = "cuda" if torch.cuda.is_available() else "cpu"
    variant, *levers = variant.split(":")  # e.g. ours:channels_last:compile
    unet, vae, text, pixels = build(preset)
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ids = torch.randint(0, 49408, (batch, 77))
    if variant == "ours":
        with torch.no_grad():
            null = text(ids[:1])[0]
        unet = NullTextUNet.from_prior(unet, null)
        text = None
    vae.requires_grad_(False).to(device)
    if text is not None:
        text.requires_grad_(False).to(device)
    unet.train().to(device)
    if "channels_last" in levers:
        unet.to(memory_format=torch.channels_last)
    if "compile" in levers:
        unet.compile()  # inductor, in place; the warm-up steps include the compile
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    latent_hw = pixels // 8
    # the cache stores the VAE posterior: mean and log-variance
    cached = torch.randn(batch, 8, latent_hw, latent_hw, device=device)
    with torch.no_grad():
        fixed_caption = text(ids.to(device))[0] if variant == "cached" else None

    def step():
        if variant == "baseline":
            with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                x = torch.randn(batch, 3, pixels, pixels, device=device)
                latents = vae.encode(x).latent_dist.sample() * 0.18215
                emb = text(ids.to(device))[0]
        else:
            mean, logvar = cached.chunk(2, 1)
            latents = (mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)) * 0.18215
            emb = fixed_caption
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,), device=device)
        noisy = sched.add_noise(latents.float(), noise, t)
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            pred = unet(noisy, t, emb).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": ":".join([variant, *levers]), "images_per_s": batch * steps / seconds, "peak_mib": peak, "device": device,
            "torch_threads": torch.get_num_threads(), "unet_params": sum(p.numel() for p in unet.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-small", choices=["cpu-small", "sd15"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--variants", nargs="*", default=["baseline", "cached", "ours"],
                   help="baseline, cached or ours, each optionally with the levers :channels_last and :compile "
                        "(e.g. ours:channels_last:compile; the first variant is the speed-up's reference)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        print(json.dumps(run_variant(args._child, args.preset, args.batch, args.steps, args.warmup, args.precision)))
        return
    rows = []
    for v in args.variants:
        cmd = [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--precision", args.precision, "--_child", v]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    base = rows[0]["images_per_s"]
    print(f"| variant | images/s | speed-up | peak MiB | device |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}x | {r['peak_mib']:.0f} | {r['device']} |")
    print(json.dumps({"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
