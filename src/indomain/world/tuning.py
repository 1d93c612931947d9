"""`indomain tune --scorer emoji[-DOMAIN]`: the emoji world's evaluators, prompts and columns for choosing the weights.

The probe prompts are names of *seen* emoji (those whose OpenMoji renders the domain model was trained on), the
validation prompts names of *held-out* emoji (never in domain training), both evenly spaced over
``split_emoji(seed=config.seed)``, the split `indomain world benchmark` and `indomain demo` train on. Control is
``control_top1`` (top-1 among 10 candidates, a share of the N images), fidelity ``fd_<domain>`` (lower is better):
``--scorer emoji`` for OpenMoji, ``emoji-sepia`` / ``emoji-sticker`` for the derived domains
(:mod:`indomain.world.domains`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..tune import TuneConfig, TunePreset

SHARE_COLUMNS = ("control_top1", "control_domain_top1", "openmoji_share", "precision_openmoji")  # shares of N images


def emoji_preset(config: TuneConfig, domain: str = "openmoji") -> TunePreset:
    """The emoji scorer for ``domain`` (``load_evaluators().scorer(k=10, domain=domain)``) with seen-emoji probe and
    held-out validation prompts."""
    from ..tune import TunePreset
    from .evaluators import load_evaluators
    from .render import evenly_spaced, list_emoji, split_emoji

    seen, held_out = split_emoji(list_emoji(), seed=config.seed)
    return TunePreset(
        scorer=load_evaluators().scorer(k=10, domain=domain),
        control="control_top1",
        fidelity=f"fd_{domain}",
        share_columns=SHARE_COLUMNS,
        probe_prompts=[e.name for e in evenly_spaced(seen, config.num_probe_prompts)],
        validation_prompts=[e.name for e in evenly_spaced(held_out, config.num_validation_prompts)],
    )
