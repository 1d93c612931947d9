"""`indomain tune --scorer emoji[-DOMAIN]`: the emoji world's evaluators, prompts and columns for choosing the weights.

Both prompt lists are names of *held-out* emoji (never in domain training), as a user's prompts name things the
uncaptioned domain images may not show; a probe on *seen* emoji overrates the control the weights keep (sticker,
w_d 4, w_c 6: 0.94 of the prior's on seen emoji, 0.77 on held-out ones). The validation prompts are evenly spaced over
the held-out emoji of ``split_emoji(seed=config.seed)`` (the split `indomain world benchmark` and `indomain demo`
train on); the probe prompts are evenly spaced over the held-out emoji that neither the validation nor the
benchmark's held-out set (:data:`~indomain.world.benchmark.PROTOCOL_PROMPTS` evenly spaced) holds, so a choice is never
made on the prompts it is scored on. Control is ``control_top1`` (top-1 among 10 candidates, a share of the N images),
fidelity ``fd_<domain>`` (lower is better): ``--scorer emoji`` for OpenMoji, ``emoji-sepia`` / ``emoji-sticker`` for
the derived domains (:mod:`indomain.world.domains`).
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
    from .benchmark import PROTOCOL_PROMPTS
    from .render import evenly_spaced, list_emoji, split_emoji

    _, held_out = split_emoji(list_emoji(), seed=config.seed)
    validation = evenly_spaced(held_out, config.num_validation_prompts)
    scored = {e.name for e in validation} | {e.name for e in evenly_spaced(held_out, PROTOCOL_PROMPTS)}
    probe = evenly_spaced([e for e in held_out if e.name not in scored], config.num_probe_prompts)
    return TunePreset(
        scorer=load_evaluators().scorer(k=10, domain=domain),
        control="control_top1",
        fidelity=f"fd_{domain}",
        share_columns=SHARE_COLUMNS,
        probe_prompts=[e.name for e in probe],
        validation_prompts=[e.name for e in validation],
    )
