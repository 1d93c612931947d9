"""Diffusers schedulers by short name, built from the prior's own scheduler config."""

from __future__ import annotations

from typing import Any

# The names, for --help and argument checks: listing them must not import diffusers (seconds).
# "dpm++" is the paper's sampler (DPM-Solver++, 25 steps); "flow-euler" the flow-matching sampler of SD3 priors;
# "auto" picks one of these two by the prior's scheduler.
SCHEDULERS = ("auto", "dpm++", "dpm", "ddim", "ddpm", "pndm", "euler", "euler-a", "heun", "lms", "unipc", "flow-euler")


def scheduler_table() -> dict[str, tuple[type, dict[str, Any]]]:
    """name -> (diffusers scheduler class, config overrides), for every name in `SCHEDULERS`."""
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
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
        "flow-euler": (FlowMatchEulerDiscreteScheduler, {}),
    }


def is_flow_matching(config: Any) -> bool:
    """Whether a scheduler config is a flow-matching one (SD3), whose model predicts a velocity."""
    return "shift" in dict(config) and "beta_start" not in dict(config)


def make_scheduler(name: str, config: Any) -> Any:
    """A scheduler of kind ``name`` sharing the prior's noise schedule and prediction type (``config``)."""
    key = name.lower()
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    flow = is_flow_matching(config)
    if key == "auto":
        key = "flow-euler" if flow else "dpm++"
    if flow != (key == "flow-euler"):
        kind = "a flow-matching prior (SD3): use flow-euler" if flow else "a diffusion prior: flow-euler is for SD3 priors"
        raise ValueError(f"scheduler {name!r} does not fit this prior; it is {kind} (or auto)")
    cls, overrides = scheduler_table()[key]
    return cls.from_config(config, **overrides)
