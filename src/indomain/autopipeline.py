"""`InDomainAutoPipeline`: the in-domain pipeline of a prior's family, as diffusers' `AutoPipelineForText2Image`.

    pipe = InDomainAutoPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0", domain_unet="runs/faces")

Stable Diffusion 1.x / 2.x gives an `InDomainPipeline`, SDXL an `InDomainXLPipeline`, SD3 an `InDomainSD3Pipeline`
(the family is read from the prior's ``model_index.json``, see `indomain.families`).
"""

from __future__ import annotations

import os
from typing import Any

from .families import SD3, SDXL, Family, detect_family
from .pipeline import InDomainPipeline
from .pipeline_sd3 import InDomainSD3Pipeline
from .pipeline_xl import InDomainXLPipeline


def pipeline_class(family: Family) -> type[InDomainPipeline]:
    """The pipeline class of a model family."""
    return {SDXL.name: InDomainXLPipeline, SD3.name: InDomainSD3Pipeline}.get(family.name, InDomainPipeline)


class InDomainAutoPipeline:
    """Opens a prior with the pipeline class of its family; not instantiated itself."""

    def __init__(self) -> None:
        raise TypeError("use InDomainAutoPipeline.from_pretrained(prior, ...)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> InDomainPipeline:
        """`from_pretrained` of the family's pipeline class; ``domain_unet`` (a folder or model) is the domain
        model for every family."""
        hub = {k: kwargs[k] for k in ("local_files_only", "token", "revision", "cache_dir") if k in kwargs}
        family = detect_family(pretrained_model_name_or_path, kwargs.get("config"), **hub)  # config: a single file's
        return pipeline_class(family).from_pretrained(pretrained_model_name_or_path, **kwargs)
