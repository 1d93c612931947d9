"""indomain: in-domain generation with large diffusion priors from unlabeled images."""

from .guidance import Branch, Guidance, GuidancePlan, MultiGuidance, cfg, combine, decoupled, gcfg, rectified
from .nulltext import NullTextUNet
from .pipeline import InDomainPipeline, InDomainPipelineOutput

__version__ = "0.1.0"
__all__ = [
    "Branch",
    "Guidance",
    "GuidancePlan",
    "InDomainPipeline",
    "InDomainPipelineOutput",
    "MultiGuidance",
    "NullTextUNet",
    "cfg",
    "combine",
    "decoupled",
    "gcfg",
    "rectified",
]
