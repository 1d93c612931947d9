"""Sampling speed: in-domain generation against diffusers' plain Stable Diffusion, in one process, alternating.

    python benchmarks/sampling.py --preset cpu-small                         # CPU, small SD-shaped model
    python benchmarks/sampling.py --preset sd15-cpu --steps 10 --batch 1     # CPU, SD1.5's UNet at 256 px
    python benchmarks/sampling.py --preset sd15 --dtype float16 --batch 1 8  # GPU: SD1.5 architecture, 512 px
    python benchmarks/sampling.py --preset sdxl --dtype float16 --batch 1 8  # GPU: SDXL architecture, 1024 px

Every path generates the same number of images from the same seeds with text encoding and VAE decoding included
(`output_type="pt"`; ``--output-type latent`` leaves the decode out). Paths run in turn, round after round, so a slow spell of the machine hits all of them alike;
the table gives the median, the spread (min–max) and the ratio to diffusers. All weights are random (public
architecture configs, nothing is downloaded): only time and memory are measured. ``--check`` also verifies that
``ours, w_d = 0`` gives diffusers' images.

Paths (w_c = 2.5 everywhere; ours w_d = 2.5):
- ``diffusers``: `StableDiffusionPipeline` / `StableDiffusionXLPipeline`, plain CFG, as users run it by default.
- ``ours w_d=0``: `InDomainPipeline` with the domain term off (equals diffusers).
- ``ours``: the default in-domain path: ∅ and the prompt batched in one prior call, the domain model in another.
- ``ours, domain interval 0-0.5``: the domain term on the first half of the trajectory only (opt-in; fewer calls).
- ``ours, domain every 2``: the domain term recomputed every second step and reused between (opt-in).
- ``ours, distilled student (one call)``: a student of `indomain distill` (the prior's UNet plus the (w_d, w_c)
  embedding, untrained: only its time is measured), one UNet call per step with no CFG batch. SD-shaped presets.
- ``ours, consistency student (4 steps)``: the same student as `indomain distill --objective consistency` writes it,
  sampled as `use_student` sets it up (`LCMScheduler`, 4 steps, one call each) against diffusers at ``--steps``.
- ``ours, LoRA domain (a second, fused UNet)`` / ``ours, LoRA domain, shared base (one call)``: a rank-16 LoRA domain
  model loaded as its own UNet, or served from the prior's UNet (`share_base=True`: one batched call per step, the
  adapter instead of a second UNet in memory). SD-shaped presets.

Peak GPU memory per path is that path's weights (each module once) plus the peak its call allocates above what was
allocated before it, since every path lives in the same process.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date

import torch

CPU_SMALL_UNET = dict(sample_size=16, block_out_channels=(64, 128, 128), layers_per_block=1,
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                      cross_attention_dim=256, attention_head_dim=8, norm_num_groups=32)
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SD15_UNET = dict(cross_attention_dim=768)  # with the other defaults of UNet2DConditionModel: SD1.5's UNet
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              max_position_embeddings=77, projection_dim=768)
CLIP_BIG_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                  num_hidden_layers=32, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")


def build(preset: str, dtype: torch.dtype) -> dict:
    """The prior's components for ``preset``, random weights."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from indomain.testing import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            steps_offset=1)
    if preset == "cpu-small":
        parts = dict(unet=UNet2DConditionModel(**CPU_SMALL_UNET),
                     vae=AutoencoderKL(**{**SD_VAE, "block_out_channels": (32, 64, 128, 128)}),
                     text_encoder=CLIPTextModel(CLIPTextConfig(**{**CLIP_L, "hidden_size": 256, "intermediate_size": 1024,
                                                                  "num_attention_heads": 4, "num_hidden_layers": 6})))
    elif preset in ("sd15", "sd15-cpu"):  # SD1.5's UNet, VAE and text encoder; sd15-cpu at 256 px (32×32 latents)
        parts = dict(unet=UNet2DConditionModel(**SD15_UNET, sample_size=64 if preset == "sd15" else 32),
                     vae=AutoencoderKL(**SD_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)))
    elif preset == "sdxl":
        parts = dict(unet=UNet2DConditionModel(**SDXL_UNET), vae=AutoencoderKL(**SD_VAE, force_upcast=False),
                     text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                     text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIG_G)), tokenizer_2=tokenizer)
    else:
        raise SystemExit(f"unknown preset {preset!r}")
    for name, part in parts.items():
        if isinstance(part, torch.nn.Module):
            parts[name] = part.eval().to(dtype)
    return {**parts, "tokenizer": tokenizer, "scheduler": scheduler}


def paths(preset: str, parts: dict, device: str, steps: int = 25, output_type: str = "pt",
          wanted: set[str] | None = None) -> dict:
    """name -> a function (prompts, seeds) -> images, for every path benchmarked (only those in ``wanted``, if given:
    each path's extra models, e.g. a domain UNet or a student copy, are built only when a path needs them)."""
    from functools import cache

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from indomain import InDomainPipeline, InDomainXLPipeline, NullTextUNet

    xl = preset == "sdxl"
    ours_cls = InDomainXLPipeline if xl else InDomainPipeline
    common = dict(num_inference_steps=steps, guidance_scale=2.5, output_type=output_type)

    @cache
    def domain():
        null = ours_cls(**parts).encode_negative(None, 1, "cpu")
        if xl:
            return NullTextUNet.from_prior(parts["unet"], null["text"], null_pooled=null["pooled"])
        return NullTextUNet.from_prior(parts["unet"], null, scheduler=parts["scheduler"])

    @cache
    def ours():
        return quiet(ours_cls(**parts, domain_unet=domain()).to(device))

    def ref():
        if xl:
            return quiet(StableDiffusionXLPipeline(**parts, add_watermarker=False).to(device))
        return quiet(StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False).to(device))

    def streamed():
        pipe = quiet(ours_cls(**parts, domain_unet=domain()).to(device))
        pipe.enable_concurrent_branches()  # CUDA streams; on a CPU the same calls in order, so not benchmarked there
        return pipe

    @cache
    def student_unet():
        return distilled_student_unet(parts, device)

    @cache
    def lora():
        return lora_domain(parts, ours(), device)

    def run(pipe, **kw):
        def go(prompts: list[str], seeds: list[int]):
            gens = [torch.Generator(device).manual_seed(s) for s in seeds]
            return pipe(prompts, generator=gens, **{**common, **kw}).images
        go.pipe = pipe
        return go

    makers = {
        "diffusers": lambda: run(ref()),
        "ours w_d=0": lambda: run(ours(), domain_guidance_scale=0.0),
        "ours": lambda: run(ours(), domain_guidance_scale=2.5),
        "ours, domain interval 0-0.5": lambda: run(ours(), domain_guidance_scale=2.5, domain_guidance_end=0.5),
        "ours, domain every 2": lambda: run(ours(), domain_guidance_scale=2.5, domain_guidance_every=2),
        **({"ours, concurrent streams": lambda: run(streamed(), domain_guidance_scale=2.5)} if device == "cuda" else {}),
        **({} if xl else {  # a distilled student and a LoRA domain model: SD-shaped presets
            "ours, distilled student (one call)": lambda: run(
                student_pipe(parts, student_unet(), device, "guidance"), domain_guidance_scale=2.5),
            "ours, consistency student (4 steps)": lambda: run(
                student_pipe(parts, student_unet(), device, "consistency"), domain_guidance_scale=2.5,
                num_inference_steps=4),
            "ours, LoRA domain (a second, fused UNet)": lambda: run(lora()[0], domain_guidance_scale=2.5),
            "ours, LoRA domain, shared base (one call)": lambda: run(lora()[1], domain_guidance_scale=2.5),
        }),
    }
    return {name: make() for name, make in makers.items() if wanted is None or name in wanted}


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lora_domain(parts: dict, ours, device: str):
    """Two pipelines with the same rank-16 LoRA null-text domain model (random adapters): loaded as a second, fused
    UNet, and served from (a copy of) the prior's UNet with `share_base`. SD-shaped presets only."""
    import copy
    import tempfile

    from peft import LoraConfig

    from indomain import InDomainPipeline, NullTextUNet
    from indomain.loading import load_domain_model, save_lora
    from indomain.train import LORA_TARGETS

    if "text_encoder_2" in parts:
        return None
    folder = tempfile.mkdtemp(prefix="indomain-bench-")
    unet = copy.deepcopy(parts["unet"]).to("cpu", torch.float32)
    model = NullTextUNet.from_prior(unet, ours.encode_text([""], device).to("cpu", torch.float32))
    model.unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    save_lora(model, folder)
    separate = InDomainPipeline(**parts, domain_unet=load_domain_model(folder, parts["unet"]))
    shared = InDomainPipeline(**{**parts, "unet": copy.deepcopy(parts["unet"])})
    shared.share_domain_base(folder)
    for pipe in (separate, shared):
        pipe.set_progress_bar_config(disable=True)
    return separate.to(device), shared.to(device)


def distilled_student_unet(parts: dict, device: str):
    """A student UNet as `indomain distill` writes it: a copy of the prior's UNet with the (untrained) weight
    embedding attached. The guidance and consistency students share it: they differ in the sampler only."""
    import copy

    from indomain.student import attach_weight_embedding

    unet = copy.deepcopy(parts["unet"])
    attach_weight_embedding(unet)
    return unet.to(device)


def student_pipe(parts: dict, unet, device: str, objective: str):
    """A pipeline sampling with the student ``unet`` (`indomain.student.use_student`): a guidance student keeps the
    prior's scheduler; a consistency student gets `LCMScheduler` on the teacher's 50-step DDIM schedule, as
    `indomain distill --objective consistency` records it."""
    from indomain import InDomainPipeline
    from indomain.student import StudentSettings, use_student

    pipe = InDomainPipeline(**{**parts, "unet": unet})
    use_student(pipe, unet, StudentSettings((1.0, 5.0), (1.0, 6.0), unet.class_embedding.config(), objective=objective,
                                            original_inference_steps=50 if objective == "consistency" else None))
    return quiet(pipe).to(device)


def apply_levers(run: dict, channels_last: bool, compile_backend: str | None) -> None:
    """The same memory format and compiler for every denoiser of every path (diffusers' UNet included), each module
    once, in place."""
    seen = set()
    for fn in run.values():
        for name in ("unet", "domain_unet"):
            module = getattr(fn.pipe, name, None)
            if isinstance(module, torch.nn.Module) and id(module) not in seen:
                seen.add(id(module))
                if channels_last:
                    module.to(memory_format=torch.channels_last)
                if compile_backend:
                    module.compile(backend=compile_backend)


def weight_bytes(pipe) -> int:
    """Bytes of every weight a pipeline holds (each module once)."""
    seen, total = set(), 0
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel() * p.element_size()
    return total


def count_syncs(fn, prompts: list[str], seeds: list[int]) -> int:
    """How many times one call makes the host wait for the GPU (torch's sync debug mode, counted as warnings)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(prompts, seeds)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-small", choices=["cpu-small", "sd15-cpu", "sd15", "sdxl"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=25,
                    help="sampling steps of every path but the consistency student's (4)")
    ap.add_argument("--output-type", default="pt", choices=["pt", "latent"], help="latent: without the VAE decode")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (each path once per round); the table is the median")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--only", nargs="*", default=None, help="benchmark only these paths")
    ap.add_argument("--check", action="store_true", help="verify that ours at w_d = 0 gives diffusers' images")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--channels-last", action="store_true", help="every UNet channels_last (diffusers' too)")
    ap.add_argument("--compile", default=None, metavar="BACKEND",
                    help="torch.compile every UNet in place with this backend, e.g. inductor (diffusers' too)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    wanted = None if args.only is None else {*args.only, "diffusers", *(["ours w_d=0"] if args.check else [])}
    run = paths(args.preset, build(args.preset, dtype), device, args.steps, args.output_type, wanted)
    apply_levers(run, args.channels_last, args.compile)
    results = []
    for batch in args.batch:
        prompts, seeds = ["a photo of a cat"] * batch, list(range(batch))
        if args.check:
            diff = (run["diffusers"](prompts, seeds) - run["ours w_d=0"](prompts, seeds)).abs().max().item()
            print(f"batch {batch}: max |diffusers − ours w_d=0| = {diff:.3g}")
            if device == "cuda":  # host syncs per call (diffusers' schedulers make some of their own)
                print(f"batch {batch}: host syncs per call: " + ", ".join(
                    f"{name} {count_syncs(run[name], prompts, seeds)}" for name in ("diffusers", "ours") if name in run))
        for fn in run.values():  # warm-up: first calls allocate and pick kernels
            fn(prompts, seeds)
        times: dict[str, list[float]] = {name: [] for name in run}
        peaks: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, fn in run.items():
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                sync(device)
                start = time.perf_counter()
                fn(prompts, seeds)
                sync(device)
                times[name].append(time.perf_counter() - start)
                if device == "cuda":  # the path's own weights plus its activations (every path shares one process)
                    peak = weight_bytes(fn.pipe) + torch.cuda.max_memory_allocated() - before
                    peaks[name] = max(peaks.get(name, 0), peak)
        ref = statistics.median(times["diffusers"])
        for name, ts in times.items():
            row = {"preset": args.preset, "batch": batch, "path": name, "median_s": statistics.median(ts),
                   "min_s": min(ts), "max_s": max(ts), "ratio": statistics.median(ts) / ref,
                   "weights_mib": weight_bytes(run[name].pipe) / 2**20}
            if name in peaks:
                row["peak_gib"] = peaks[name] / 2**30
                row["memory_ratio"] = peaks[name] / peaks["diffusers"]
            results.append(row)
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    levers = (" · channels_last" if args.channels_last else "") + (f" · compiled ({args.compile})" if args.compile else "")
    lcm = " (the consistency student: 4 LCM steps)" if "ours, consistency student (4 steps)" in run else ""
    decode = "" if args.output_type == "pt" else " · no VAE decode (latents)"
    print(f"\n{date.today()} · {args.preset} · {device_name} · torch {torch.__version__} · {args.dtype} · "
          f"{args.steps} DPM-Solver++ steps{lcm}{decode} · median of {args.repeats}{levers}\n")
    mem = device == "cuda"
    print("| batch | path | median s | min–max s | × diffusers | weights MiB |" + (" peak GiB | × memory |" if mem else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if mem else ""))
    for r in results:
        line = (f"| {r['batch']} | {r['path']} | {r['median_s']:.3f} | {r['min_s']:.3f}–{r['max_s']:.3f} | "
                f"{r['ratio']:.2f}× | {r['weights_mib']:.0f} |")
        if mem:
            line += f" {r['peak_gib']:.2f} | {r['memory_ratio']:.2f}× |"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name, "args": vars(args), "rows": results}, f, indent=2)


if __name__ == "__main__":
    main()
