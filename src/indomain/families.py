"""Model families: what differs between Stable Diffusion 1.x/2.x, SDXL and SD3, in one table.

The method is the same for every family: a domain model that ignores text, and Eq. C combined in the prior's
prediction space. Four things differ, and each lives in one place:

============================  ==========================================  ==========================================
what differs                   where                                       per family
============================  ==========================================  ==========================================
prompt encoding                the pipeline's ``encode_text``              CLIP (SD); two CLIPs + pooled (SDXL);
                                                                           two CLIPs + T5 + pooled (SD3)
the model call                 `denoiser_inputs` / `call_denoiser` here,   UNet with ``added_cond_kwargs`` (SDXL:
                               for sampling, training and distillation     pooled text + time ids); MMDiT transformer
the training target            `indomain.train` (``Family.objective``)     epsilon or v (``diffusion``); velocity
                                                                           ``noise − x0`` (``flow``)
the null-text conversion       `indomain.nulltext`                         `NullTextUNet` (constant or exact);
                                                                           `NullTextTransformer` (exact)
============================  ==========================================  ==========================================

The guidance math (`indomain.guidance`), the sampling loop (`InDomainPipeline.denoise`) and the trainer's loop are
shared, and every denoiser call they make (the pipelines' ``model_inputs`` / ``call_denoiser`` hooks, `indomain.train`'s
loss, `indomain.distill`'s teacher and student) goes through `call_denoiser` with `denoiser_inputs`. A family is
detected from the prior's ``model_index.json``: its pipeline class name, else its components.

**Adding a family**: a `Family` row here (and its branch in `denoiser_inputs` / `call_denoiser` if its denoiser
takes its inputs differently); a pipeline class that subclasses `InDomainPipeline` and overrides the
family-specific hooks (see `indomain.pipeline_xl` for the smallest example); its null-text wrapper in
`indomain.nulltext` if its denoiser is not a `UNet2DConditionModel`; its row in `indomain.autopipeline`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# the keys of a text condition that is a dict: token embeddings, pooled embedding (SDXL, SD3), IP-Adapter images
TEXT, POOLED, IP = "text", "pooled", "ip"


@dataclass(frozen=True)
class Family:
    """One model family. ``denoiser`` and ``text_encoders`` are component names of its diffusers pipeline folder."""

    name: str
    title: str
    pipelines: tuple[str, ...]  # model_index.json `_class_name`s of this family
    denoiser: str  # "unet" or "transformer"
    text_encoders: tuple[str, ...]  # required text encoders, in the pipeline's order
    optional_text_encoders: tuple[str, ...] = ()
    objective: str = "diffusion"  # "diffusion": epsilon / v-prediction on a DDPM schedule; "flow": flow matching
    size_conditioning: bool = False  # the denoiser takes SDXL's time ids (original size, crop, target size)

    def tokenizer(self, encoder: str) -> str:
        """The tokenizer component of text encoder ``encoder`` ("text_encoder_2" -> "tokenizer_2")."""
        return encoder.replace("text_encoder", "tokenizer")


SD = Family("sd", "Stable Diffusion 1.x / 2.x", ("StableDiffusionPipeline", "InDomainPipeline"), "unet", ("text_encoder",))
SDXL = Family(
    "sdxl", "Stable Diffusion XL", ("StableDiffusionXLPipeline", "InDomainXLPipeline"), "unet",
    ("text_encoder", "text_encoder_2"), size_conditioning=True,
)
SD3 = Family(
    "sd3", "Stable Diffusion 3 / 3.5", ("StableDiffusion3Pipeline", "InDomainSD3Pipeline"), "transformer",
    ("text_encoder", "text_encoder_2"), optional_text_encoders=("text_encoder_3",), objective="flow",
)
FAMILIES = {f.name: f for f in (SD, SDXL, SD3)}


def denoiser_inputs(family: Family, cond: Any, batch: int, time_ids: torch.Tensor | None = None) -> dict:
    """The denoiser's keyword inputs for a batch of ``batch`` rows, in sampling and training alike.

    ``cond`` is a text condition: a tensor of token embeddings (SD), or a dict with ``text``, ``pooled`` (SDXL, SD3)
    and, with an IP-Adapter, ``ip0``, ``ip1``, ...; None for a domain model, which takes no text. ``time_ids`` are
    SDXL's size conditioning (one row, or one per row), ignored by a family without it.
    """
    if family.denoiser == "transformer":  # the MMDiT: the pooled text is an input of its own
        return {} if cond is None else {"encoder_hidden_states": cond[TEXT], "pooled_projections": cond[POOLED]}
    added = {}
    if isinstance(cond, dict):
        ips = [cond[f"{IP}{j}"] for j in range(sum(k.startswith(IP) for k in cond))]
        if ips:
            added["image_embeds"] = ips
        if POOLED in cond:  # SDXL's pooled text rides in the added conditioning
            added["text_embeds"] = cond[POOLED]
    if family.size_conditioning:
        if time_ids is None:
            raise ValueError(f"a {family.title} denoiser needs time_ids (original size, crop, target size)")
        added["time_ids"] = time_ids.expand(batch, -1)
    inputs = {"encoder_hidden_states": cond[TEXT] if isinstance(cond, dict) else cond}
    if added:
        inputs["added_cond_kwargs"] = added
    return inputs


def call_denoiser(family: Family, model: Any, x: torch.Tensor, t: torch.Tensor, inputs: dict, extra: dict | None = None,
                  attention_kwargs: dict | None = None) -> torch.Tensor:
    """One denoiser call, the same in sampling and training: ``inputs`` from `denoiser_inputs` (plus any input of the
    model's own, e.g. a student's ``class_labels``), ``extra`` the ControlNet / adapter residuals, ``attention_kwargs``
    the UNet's ``cross_attention_kwargs`` (the MMDiT's ``joint_attention_kwargs``). Only what is set is passed, so
    any callable with the denoiser's signature will do (a test's stand-in, a wrapper)."""
    if family.denoiser == "transformer":  # the MMDiT: keyword arguments, one timestep per row
        if extra:
            raise ValueError(f"spatial control is not supported on a {family.title} prior")
        attention = {} if attention_kwargs is None else {"joint_attention_kwargs": attention_kwargs}
        return model(hidden_states=x, timestep=t.expand(x.shape[0]), return_dict=False, **inputs, **attention)[0]
    attention = {} if attention_kwargs is None else {"cross_attention_kwargs": attention_kwargs}
    return model(x, t, return_dict=False, **inputs, **attention, **(extra or {}))[0]


def family_of(model_index: dict) -> Family:
    """The family of a pipeline folder from its ``model_index.json`` contents."""
    name = model_index.get("_class_name")
    for family in FAMILIES.values():
        if name in family.pipelines:
            return family
    if "transformer" in model_index and "unet" not in model_index:
        if "text_encoder_2" in model_index and "text_encoder_3" in model_index:
            return SD3
        raise ValueError(f"unsupported prior {name!r}: a transformer prior that is not Stable Diffusion 3 "
                         f"(supported: {', '.join(f.title for f in FAMILIES.values())})")
    if "unet" in model_index:
        return SDXL if "text_encoder_2" in model_index else SD
    raise ValueError(f"unsupported prior {name!r}: model_index.json names neither a unet nor a transformer "
                     f"(supported: {', '.join(f.title for f in FAMILIES.values())})")


def read_model_index(prior: str | os.PathLike, **hub_kwargs) -> dict:
    """``model_index.json`` of a local pipeline folder, or of a hub id (from the hub's cache when offline)."""
    path = Path(prior).expanduser() / "model_index.json"
    if not path.is_file() and not Path(prior).expanduser().exists():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(str(prior), "model_index.json", **hub_kwargs))
    return json.loads(path.read_text())


# the diffusers pipeline whose `from_single_file` opens a single-file checkpoint of each family
SINGLE_FILE_PIPELINES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
                         "sd3": "StableDiffusion3Pipeline"}


def detect_family(prior: str | os.PathLike, config: str | os.PathLike | None = None, **hub_kwargs) -> Family:
    """The family of a prior (local folder or hub id). A single-file checkpoint's family comes from its diffusers
    ``config`` folder, else from its weights' names (diffusers' `infer_diffusers_model_type`)."""
    if Path(prior).expanduser().is_file():
        if config is not None:
            return family_of(read_model_index(config, **hub_kwargs))
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type
        from safetensors.torch import load_file

        kind = infer_diffusers_model_type(load_file(str(Path(prior).expanduser())))
        return SD3 if kind.startswith("sd3") else SDXL if kind.startswith(("xl", "playground")) else SD
    return family_of(read_model_index(prior, **hub_kwargs))
