"""Tiny Stable-Diffusion-shaped components built from config, for tests and the offline demo.

Nothing here touches a hub: the tokenizer is a byte-level CLIP BPE written to a local folder
(514 tokens, no merges), and every model has random weights drawn under a fixed seed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP/GPT-2's reversible byte -> printable-unicode table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_byte_level_clip_vocab(folder: str | Path) -> Path:
    """Write `vocab.json` + `merges.txt` of a 514-token byte-level CLIP tokenizer into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def tiny_tokenizer(folder: str | Path | None = None) -> CLIPTokenizer:
    """A CLIPTokenizer built from files written to `folder` (by default a temp dir, removed afterwards)."""
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="indomain-tok-") as tmp:
            return tiny_tokenizer(tmp)
    write_byte_level_clip_vocab(folder)
    # model_max_length must be given: without it transformers reports 1e30 and SD pads to that.
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def tiny_text_encoder(tokenizer: CLIPTokenizer, hidden_size: int = 32, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def tiny_unet(cross_attention_dim: int = 32, sample_size: int = 16, seed: int = 0, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    config = dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    config.update(overrides)
    return UNet2DConditionModel(**config).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32,
        sample_size=32,
    ).eval()


def tiny_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def tiny_sd_components(tokenizer_dir: str | Path | None = None, seed: int = 0) -> dict:
    """Components of a tiny SD-1.x prior: 32x32 px images, 16x16x4 latents."""
    tokenizer = tiny_tokenizer(tokenizer_dir)
    return dict(
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(tokenizer, seed=seed),
        tokenizer=tokenizer,
        unet=tiny_unet(seed=seed),
        scheduler=tiny_scheduler(),
    )


def tiny_sdxl_components(tokenizer_dir: str | Path | None = None, seed: int = 0, width_2: int = 32) -> dict:
    """Components of a tiny SDXL prior (two CLIP text encoders, pooled text and time ids): 32x32 px, 16x16x4 latents.
    ``width_2``: the second encoder's width (diffusers' single-file loader tells the two CLIPs apart by width only)."""
    from transformers import CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer(tokenizer_dir)
    encoder = tiny_text_encoder(tokenizer, seed=seed)
    torch.manual_seed(seed + 1)
    encoder_2 = CLIPTextModelWithProjection(tiny_text_encoder(tokenizer, hidden_size=width_2, seed=seed + 1).config).eval()
    unet = tiny_unet(cross_attention_dim=32 + width_2, seed=seed, addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=6 * 8 + width_2)
    return dict(vae=tiny_vae(seed), text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer,
                tokenizer_2=tokenizer, unet=unet, scheduler=tiny_scheduler())


def tiny_sd3_components(tokenizer_dir: str | Path | None = None, seed: int = 0, width_2: int = 32) -> dict:
    """Components of a tiny SD3 prior (MMDiT transformer, two CLIPs, no T5, flow matching): 32x32 px, 16x16x4 latents.
    ``width_2``: the second CLIP's width (as `tiny_sdxl_components`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer(tokenizer_dir)
    encoders = []
    for k, width in enumerate((32, width_2)):
        torch.manual_seed(seed + k)
        encoders.append(CLIPTextModelWithProjection(tiny_text_encoder(tokenizer, hidden_size=width, seed=seed + k).config).eval())
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=max(64, 32 + width_2), caption_projection_dim=32, pooled_projection_dim=32 + width_2,
        out_channels=4,
    ).eval()
    vae = tiny_vae(seed)
    vae.register_to_config(shift_factor=0.0609, scaling_factor=1.5035)
    return dict(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1], text_encoder_3=None, tokenizer=tokenizer,
                tokenizer_2=tokenizer, tokenizer_3=None, transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler())


def save_tiny_prior(folder: str | Path, seed: int = 0, family: str = "sd", width_2: int = 32) -> Path:
    """Save a tiny `StableDiffusionPipeline` folder (``family="sdxl"``: `StableDiffusionXLPipeline`, ``"sd3"``:
    `StableDiffusion3Pipeline`, ``width_2`` their second text encoder's width), loadable like any local checkpoint of
    that family."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = Path(folder)
    if family != "sd":
        if family == "sdxl":
            pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed=seed, width_2=width_2), add_watermarker=False)
        else:
            pipe = StableDiffusion3Pipeline(**tiny_sd3_components(seed=seed, width_2=width_2))
        pipe.save_pretrained(folder, safe_serialization=True)
        return folder
    pipe = StableDiffusionPipeline(
        **tiny_sd_components(seed=seed),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """A random 2-layer CLIP (text + vision, 32 px images) with the byte-level tokenizer, saved like a hub snapshot."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    tokenizer = tiny_tokenizer(folder)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                num_hidden_layers=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(str(folder))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder
