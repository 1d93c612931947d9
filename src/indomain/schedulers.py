"""Diffusers schedulers by short name, built from the prior's own scheduler config."""

from __future__ import annotations

from typing import Any

# The names, for --help and argument checks: listing them must not import diffusers (seconds).
# "dpm++" is the paper's sampler (DPM-Solver++, 25 steps).
SCHEDULERS = ("dpm++", "dpm", "ddim", "ddpm", "pndm", "euler", "euler-a", "heun", "lms", "unipc")


def scheduler_table() -> dict[str, tuple[type, dict[str, Any]]]:
    """name -> (diffusers scheduler class, config overrides), for every name in `SCHEDULERS`."""
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        HeunDiscreteScheduler,
        LMSDiscreteScheduler,
        PNDMScheduler,
        UniPCMultistepScheduler,
    )

    return {
        "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
        "dpm": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
        "ddim": (DDIMScheduler, {}),
        "ddpm": (DDPMScheduler, {}),
        "pndm": (PNDMScheduler, {}),
        "euler": (EulerDiscreteScheduler, {}),
        "euler-a": (EulerAncestralDiscreteScheduler, {}),
        "heun": (HeunDiscreteScheduler, {}),
        "lms": (LMSDiscreteScheduler, {}),
        "unipc": (UniPCMultistepScheduler, {}),
    }


def make_scheduler(name: str, config: Any) -> Any:
    """A scheduler of kind ``name`` sharing the prior's noise schedule and prediction type (``config``)."""
    key = name.lower()
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    cls, overrides = scheduler_table()[key]
    return cls.from_config(config, **overrides)
