"""indomain: in-domain generation with large diffusion priors from unlabeled images.

The public names load on first use (``indomain.InDomainPipeline`` imports torch and diffusers then, not at
``import indomain``), so the command line starts in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# public name -> the module that defines it
_HOMES = {
    "Branch": "guidance",
    "Guidance": "guidance",
    "GuidancePlan": "guidance",
    "MultiGuidance": "guidance",
    "cfg": "guidance",
    "combine": "guidance",
    "decoupled": "guidance",
    "gcfg": "guidance",
    "rectified": "guidance",
    "NullTextUNet": "nulltext",
    "NullTextTransformer": "nulltext",
    "DomainModels": "nulltext",
    "InDomainPipeline": "pipeline",
    "InDomainPipelineOutput": "pipeline",
    "InDomainXLPipeline": "pipeline_xl",
    "InDomainSD3Pipeline": "pipeline_sd3",
    "InDomainAutoPipeline": "autopipeline",
}
__all__ = sorted(_HOMES)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports on first use
    from .guidance import Branch, Guidance, GuidancePlan, MultiGuidance, cfg, combine, decoupled, gcfg, rectified
    from .autopipeline import InDomainAutoPipeline
    from .nulltext import DomainModels, NullTextTransformer, NullTextUNet
    from .pipeline import InDomainPipeline, InDomainPipelineOutput
    from .pipeline_sd3 import InDomainSD3Pipeline
    from .pipeline_xl import InDomainXLPipeline


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'indomain' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
