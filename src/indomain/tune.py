"""`indomain tune`: the guidance form and weights (w_d, w_c) chosen for a stated goal, checked on held-out prompts,
and stored with the domain model.

    indomain tune --prior EMOJI_PRIOR --domain outputs/demo/ours --scorer emoji --out runs/tune   # the emoji world
    indomain tune --prior SD15 --domain DOMAIN --prompts-file prompts.txt --clip-model CLIP-L14 \\
        --real MY_IMAGES --inception-weights W.pth --metrics fid --out runs/tune                   # CLIP score + FID

The paper speaks of "carefully initialized weights" and gives no rule for them. The goal here: the most domain
fidelity while keeping at least ``--keep`` (default 0.9) of the prior's control, where control and fidelity are
two named result columns (emoji world: ``control_top1`` and ``fd_<domain>``, lower is better; real SD:
``clip_score`` and ``fid`` against ``--real``). A weight does not mean the same on every prior and domain model, so
this rule, run once per domain model, replaces a fixed pair. Three steps, each an :func:`indomain.evaluate.evaluate` run:

1. **probe**: every (w_d, w_c) of the grid under each ``--guidance-forms`` form on the probe prompts, plus the
   prior's reference: the prior alone (CFG) at ``--reference-guidance-scale`` (2.5), whose control is the 100 %
   that ``--keep`` is a share of;
2. **choose** (:func:`choose`, a pure function of the probe table): among the settings that keep the control, the
   one with the best fidelity (ties: more control). When none qualifies, it says so and names the closest;
3. **validate**: the chosen form and weights and the prior's reference on held-out prompts, with the same number of
   images and seeds (an FD depends on N, so both steps use the same N). Predicted (probe) and measured (held out)
   numbers side by side, with binomial standard errors for share-type columns (``control_top1``: N images).

Then the choice is **stored with the domain model** (``tuned_guidance.json`` in its folder, unless ``--no-store``),
and `indomain generate` samples with it whenever no form or weight is given.

Outputs in ``--out``: ``probe/`` and ``validation/`` (two `indomain evaluate` folders: images, tables, report.html),
``tune.json`` (every setting, the probe table, the choice, the validation), ``tune.md`` and ``tune.png`` (the probe
grid, control against fidelity, the settings that keep the control filled, the choice ringed).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TYPE_CHECKING

from .cliargs import add_options, finite_float, from_args, option, positive_float, positive_int
from .evaluate import OURS_METHODS, EvalConfig, Method, Scorer, Sweep, read_lines
from .outputs import to_json
from .numerics import is_finite_number

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Choice", "Goal", "NoFeasibleSetting", "TuneConfig", "TunePreset", "TuneResult", "add_parser",
           "binomial_se", "choose", "form_of", "resolve_forms", "split_prompts", "tune"]

PRIOR = "prior"  # the prior's method name in probe/ and validation/ (ours': OURS_METHODS, by guidance form)
GUIDANCE_FORM_CHOICES = ("auto", *OURS_METHODS)


@dataclass
class TuneConfig:
    """Every setting of `indomain tune` (each field is also its option ``--field-name``); written to tune.json."""

    # the command's one line in `indomain --help` (cli.COMMANDS derives it from here)
    command_help: ClassVar[str] = ("choose the weights (w_d, w_c) for a goal on probe prompts and check them on "
                                   "held-out prompts")

    prior: str = option(help="prior pipeline folder or hub id, or a single-file .safetensors checkpoint (with "
                        "--prior-config)")
    domain: str = option(help="domain model folder: the NullTextUNet `indomain train` wrote (ours)")
    out: str = option(help="output folder (probe/, validation/, tune.json, tune.md, tune.png)")
    prior_config: str | None = option(None, "for a single-file --prior: a diffusers folder of the same model (its "
                                      "configs, tokenizers and scheduler; its weights are not read)", metavar="DIR")
    scorer: str | None = option(None, "a named scorer with the prompts and columns that fit it (default: none: CLIP "
                                "score and FID/KID only)", metavar="NAME")
    probe_prompts: list[str] | None = option(None, "prompts the weights are chosen on (default: from --prompts or "
                                             "--scorer)", metavar="TEXT")
    validation_prompts: list[str] | None = option(None, "held-out prompts the choice is checked on (default: from "
                                                  "--prompts or --scorer)", metavar="TEXT")
    prompts: list[str] | None = option(None, "one prompt list, split in two by a hash of each prompt and --seed: "
                                       "--num-probe-prompts for the probe, up to --num-validation-prompts of the rest "
                                       "for validation (default: none)", metavar="TEXT")
    num_probe_prompts: int = option(48, "probe prompts taken from --prompts or --scorer", type=positive_int,
                                   metavar="P")
    num_validation_prompts: int = option(48, "validation prompts taken from --prompts or --scorer",
                                        type=positive_int, metavar="P")
    domain_guidance_scales: list[float] = option([1.0, 2.5, 4.0, 5.5], "the grid's domain weights w_d (the prior "
                                                "alone, w_d = 0, is probed anyway as the reference)",
                                                type=finite_float, metavar="W", aliases=["--domain-scales"])
    guidance_scales: list[float] = option([1.5, 2.5, 4.0, 6.0], "the grid's control weights w_c", type=finite_float,
                                         metavar="W")
    guidance_forms: list[str] = option(["auto"], "the guidance forms probed, each over the whole grid (see `indomain "
                                       "generate --guidance-form`); the choice names its form. auto (default): "
                                       "domain-text and domain-text-bands on a Stable Diffusion 1.x/2.x prior, else "
                                       "decoupled (Eq. A)",
                                       choices=GUIDANCE_FORM_CHOICES, metavar="FORM")
    reference_guidance_scale: float = option(2.5, "w_c of the prior's reference (the prior alone, CFG), whose control "
                                             "--keep is a share of", type=finite_float, metavar="W")
    keep: float = option(0.9, "keep at least this share of the prior's control", type=positive_float,
                         metavar="SHARE")
    control: str | None = option(None, "control column, higher is better (default: --scorer's; clip_score with "
                                 "--clip-model; else control_top1)", metavar="COLUMN")
    fidelity: str | None = option(None, "fidelity column (default: --scorer's; fid or kid with --real; else "
                                  "fd_openmoji)", metavar="COLUMN")
    fidelity_higher_is_better: bool = option(False, "the fidelity column grows with fidelity (e.g. openmoji_share); "
                                             "default: lower is better, as for FD, FID and KID")
    num_images: int = option(48, "images per setting, in the probe and the validation alike (image i: prompt i mod P, "
                             "seed + i)", type=positive_int, metavar="N")
    seed: int = option(0, "image i uses seed+i in every setting; also the --prompts split")
    allow_pickle: bool = option(False, "allow pickle checkpoints (weights_only loading); only for files you trust")
    overwrite: bool = option(False, "replace an earlier `indomain tune` output in --out")
    store: bool = option(True, "do not store the choice with the domain model (default: written to "
                         "tuned_guidance.json in the --domain folder, replacing an earlier one, so that `indomain "
                         "generate` samples with it when no form or weight is given)", flag="--no-store")


@dataclass
class TunePreset:
    """What ``--scorer NAME`` brings: the scorer and the prompts and columns that fit it (``TuneConfig`` wins)."""

    scorer: Scorer
    control: str
    fidelity: str
    fidelity_higher_is_better: bool = False
    share_columns: tuple[str, ...] = ()  # columns that are a share of the N images: binomial standard errors
    probe_prompts: list[str] | None = None
    validation_prompts: list[str] | None = None


@dataclass(frozen=True)
class Goal:
    """The most fidelity while ``control >= keep * control(the prior alone at w_c = reference_w_c)``."""

    control: str
    fidelity: str
    keep: float = 0.9
    fidelity_higher_is_better: bool = False
    reference_w_c: float = 2.5

    def describe(self) -> str:
        best = "highest" if self.fidelity_higher_is_better else "lowest"
        return (f"{best} {self.fidelity} with {self.control} >= {self.keep:g} x the prior's "
                f"(the prior alone, w_c = {self.reference_w_c:g})")


@dataclass
class Choice:
    """The probe table annotated with ``kept`` (control / the prior's) and ``feasible``, and the pick from it."""

    rows: list[dict[str, Any]]
    reference: dict[str, Any]
    chosen: dict[str, Any] | None  # None when no setting keeps the control
    best_available: dict[str, Any] | None  # the setting that keeps the most control, when none keeps enough


class NoFeasibleSetting(ValueError):
    """No setting of the probe keeps the control the goal asks for; ``choice.best_available`` came closest."""

    def __init__(self, message: str, choice: Choice) -> None:
        super().__init__(message)
        self.choice = choice


@dataclass
class TuneResult:
    out: Path
    choice: Choice
    validation: dict[str, Any]
    stored: Path | None = None  # the domain model's tuned_guidance.json, when written


# ----------------------------------------------------------------------------------------------------------------
# The choice: a pure function of the probe table
# ----------------------------------------------------------------------------------------------------------------


def binomial_se(p: float, n: int) -> float:
    """Standard error of a share ``p`` of ``n`` independent trials, sqrt(p (1 - p) / n) (0 at p = 0 or 1)."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n > 0 and is_finite_number(p) else math.nan


def _is_reference(row: Mapping[str, Any], goal: Goal) -> bool:
    """The prior's reference row: the prior alone (method ``prior``) at the reference w_c; in a table without the
    prior as a method, Eq. A at w_d = 0 (the same images)."""
    if not math.isclose(row["w_c"], goal.reference_w_c):
        return False
    if row.get("method") == PRIOR:
        return True
    return row.get("method") in (None, OURS_METHODS["decoupled"]) and math.isclose(row["w_d"], 0.0, abs_tol=1e-12)


def _find_reference(rows: Sequence[Mapping[str, Any]], goal: Goal) -> Mapping[str, Any] | None:
    prior = [r for r in rows if _is_reference(r, goal)]
    return next((r for r in prior if r.get("method") == PRIOR), prior[0] if prior else None)


def form_of(row: Mapping[str, Any]) -> str:
    """The guidance form of one of ours' rows, from its method name (:data:`OURS_METHODS`; Eq. A when unnamed)."""
    forms = {name: form for form, name in OURS_METHODS.items()}
    return forms.get(row.get("method") or OURS_METHODS["decoupled"], "decoupled")


def choose(rows: Sequence[Mapping[str, Any]], goal: Goal) -> Choice:
    """Pick the setting of ``rows`` (evaluate's result rows: ``method``, ``w_d``, ``w_c`` and the goal's two columns)
    with the best fidelity among those that keep at least ``goal.keep`` of the prior's control (ties: more control,
    then lower weights). The prior's row is the prior alone (method ``prior``) at w_c = ``goal.reference_w_c``, or in
    a table of Eq. A without it, ours at w_d = 0 there; the prior's own rows are never chosen.

    Raises ValueError when a column or the prior's row is missing or its control is not positive, and
    :class:`NoFeasibleSetting` (with the annotated table and the closest setting) when no setting qualifies.
    """
    if not rows:
        raise ValueError("the probe table is empty")
    for column in (goal.control, goal.fidelity):
        if not any(column in r for r in rows):
            columns = sorted({k for r in rows for k in r if is_finite_number(r[k])} - {"w_d", "w_c", "n_generated"})
            raise ValueError(f"no column {column!r} in the probe results; columns: {columns} (pick them with "
                             "--control / --fidelity)")
    found = _find_reference(rows, goal)
    if found is None:
        raise ValueError(f"the probe has no prior's row at w_c = {goal.reference_w_c:g}")
    reference = dict(found)
    c0 = reference.get(goal.control)
    if not is_finite_number(c0) or c0 <= 0:
        raise ValueError(f"the prior's {goal.control} is {c0} at w_c = {goal.reference_w_c:g}: a share of "
                         "it means nothing (is the control column right, and higher better?)")
    table = []
    for r in rows:
        c, f = r.get(goal.control), r.get(goal.fidelity)
        kept = c / c0 if is_finite_number(c) else math.nan
        ok = is_finite_number(kept) and is_finite_number(f) and (kept >= goal.keep or math.isclose(kept, goal.keep))
        table.append({**r, "kept": kept, "feasible": ok and r.get("method") != PRIOR})
    sign = -1.0 if goal.fidelity_higher_is_better else 1.0  # sort key: smaller is better
    feasible = [r for r in table if r["feasible"]]
    if feasible:
        chosen = min(feasible, key=lambda r: (sign * r[goal.fidelity], -r[goal.control], r["w_d"], r["w_c"]))
        return Choice(table, {**reference, "kept": 1.0}, chosen, None)
    scored = [r for r in table if is_finite_number(r["kept"]) and is_finite_number(r.get(goal.fidelity))
              and r.get("method") != PRIOR]
    best = min(scored, key=lambda r: (-r["kept"], sign * r[goal.fidelity])) if scored else None
    choice = Choice(table, {**reference, "kept": 1.0}, None, best)
    closest = ("none has both columns finite" if best is None else
               f"the closest is {form_of(best)} w_d = {best['w_d']:g}, w_c = {best['w_c']:g}: {goal.control} "
               f"{best[goal.control]:.4g} "
               f"({best['kept']:.3f} of the prior's {c0:.4g}), {goal.fidelity} {best[goal.fidelity]:.4g}")
    raise NoFeasibleSetting(f"no setting of the probe grid keeps {goal.keep:g} of the prior's {goal.control} "
                            f"({c0:.4g}); {closest}. Lower --keep or widen the grid (e.g. higher --guidance-scales)",
                            choice)


def split_prompts(prompts: Sequence[str], n_probe: int, n_validation: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Two disjoint lists from one: prompts ordered by ``sha256(seed:prompt)`` (independent of their input order),
    the first ``n_probe`` for the probe, the next ``n_validation`` for validation (duplicates dropped)."""
    unique = list(dict.fromkeys(prompts))
    if len(unique) < 2:
        raise ValueError(f"--prompts needs at least 2 distinct prompts to split into probe and validation, got {len(unique)}")
    ordered = sorted(unique, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    n_probe = min(n_probe, len(unique) - 1)
    return ordered[:n_probe], ordered[n_probe : n_probe + n_validation]


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def _resolve(config: TuneConfig, protocol: EvalConfig, preset: TunePreset | None) -> tuple[Goal, list[str], list[str]]:
    """The goal and both prompt lists; every mistake that can be seen before generation fails here."""
    control = config.control or (preset.control if preset else "clip_score" if protocol.clip_model else "control_top1")
    if config.fidelity:
        fidelity = config.fidelity
    elif preset:
        fidelity = preset.fidelity
    else:
        fidelity = next((m for m in ("fid", "kid") if m in protocol.metrics), "fid") if protocol.real else "fd_openmoji"
    higher = config.fidelity_higher_is_better or (preset is not None and not config.fidelity
                                                  and preset.fidelity_higher_is_better)
    builtin = {"clip_score": ("--clip-model", protocol.clip_model is not None)}
    builtin |= {m: ("--real (and --metrics " + m + ")", protocol.real is not None and m in protocol.metrics)
                for m in ("fid", "kid")}
    for flag, column in (("--control", control), ("--fidelity", fidelity)):
        if column in builtin and not builtin[column][1]:
            raise ValueError(f"{flag} {column} needs {builtin[column][0]}")
        if column not in builtin and preset is None:
            raise ValueError(f"{flag} {column} is no column of CLIP score or FID/KID, and no scorer adds it: pass "
                             "--scorer (e.g. emoji), --clip-model, or --real")
    if control == fidelity:
        raise ValueError(f"control and fidelity are the same column ({control!r})")
    if not 0 < config.keep:
        raise ValueError(f"--keep must be > 0, got {config.keep}")

    probe, validation = config.probe_prompts, config.validation_prompts
    if config.prompts:
        if probe or validation:
            raise ValueError("pass --prompts (split in two) or --probe-prompts with --validation-prompts, not both")
        probe, validation = split_prompts(config.prompts, config.num_probe_prompts, config.num_validation_prompts,
                                          config.seed)
    elif preset is not None:
        probe = probe or preset.probe_prompts
        validation = validation or preset.validation_prompts
    if not probe or not validation:
        raise ValueError("pass probe and validation prompts: --prompts (one list, split in two), or --probe-prompts "
                         "and --validation-prompts (or their -file forms), or a --scorer that brings its own")
    overlap = sorted(set(probe) & set(validation))
    if overlap:
        raise ValueError(f"validation prompts must be held out from the probe; both hold {overlap[:5]}")
    goal = Goal(control, fidelity, config.keep, higher, config.reference_guidance_scale)
    return goal, list(probe), list(validation)


def _phase(name: str, out: Path, prompts: list[str], methods: list[Method], sweep: Sweep, config: TuneConfig,
           protocol: EvalConfig, goal: Goal, preset: TunePreset | None, extractor: nn.Module | None) -> list[dict]:
    """One `indomain evaluate` run into ``out/name``: its result rows."""
    from .evaluate import evaluate

    eval_config = dataclasses.replace(protocol, out=out / name, prompts=prompts, clip_texts=None,
                                      num_images=config.num_images, seed=config.seed, plot_x=goal.control,
                                      plot_y=goal.fidelity, overwrite=False)
    result = evaluate(methods, sweep, eval_config, extractor=extractor, scorer=preset.scorer if preset else None,
                      desc=f"{name}: generating")
    assert result is not None, "tune runs as one process"
    return result.rows


def _prior_method(config: TuneConfig, w_c: float) -> Method:
    return Method(PRIOR, config.prior, domain_guidance_scales=[0.0], guidance_scales=[w_c],
                  allow_pickle=config.allow_pickle, prior_config=config.prior_config)


def tune(config: TuneConfig, protocol: EvalConfig | None = None, *, preset: TunePreset | None = None,
         extractor: nn.Module | None = None) -> TuneResult:
    """Probe the grid, choose the weights for the goal, validate them on held-out prompts; write tune.json/md/png.

    ``protocol`` holds the sampling and metric settings of both evaluate runs (scheduler, steps, batch size, size,
    dtype, --real, CLIP model, ...); its out, prompts, N and seed come from ``config``. ``preset`` brings a scorer and
    the defaults that fit it; ``extractor`` is the FID/KID feature network (with ``protocol.real``).
    Raises :class:`NoFeasibleSetting` after writing the probe's outputs when no setting meets the goal.
    """
    from .outputs import claim_output_dir, close_run
    from .safeload import check_prior_config

    check_prior_config(config.prior, config.prior_config)  # before --out is claimed
    protocol = protocol or EvalConfig(out=config.out)
    goal, probe_prompts, validation_prompts = _resolve(config, protocol, preset)
    start = time.time()
    out = claim_output_dir(config.out, "tune", overwrite=config.overwrite,
                           inputs={"--prior": config.prior, "--prior-config": config.prior_config, "--domain": config.domain,
                                   "--real": protocol.real})
    try:
        return _tune(config, protocol, preset, extractor, goal, probe_prompts, validation_prompts, out, start)
    finally:
        close_run(out)


def _tune(config: TuneConfig, protocol: EvalConfig, preset: TunePreset | None, extractor: Any, goal: Goal,
          probe_prompts: list[str], validation_prompts: list[str], out: Path, start: float) -> TuneResult:
    from .console import info

    shares = set(preset.share_columns) if preset else set()
    record: dict[str, Any] = {"config": dataclasses.asdict(config), "protocol": dataclasses.asdict(protocol),
                              "goal": dataclasses.asdict(goal), "scorer": config.scorer,
                              "extractor": None if extractor is None else type(extractor).__name__,
                              "share_columns": sorted(shares), "n_per_setting": config.num_images}

    # 1. Probe: the grid under each form, and the prior's reference (Eq. A at w_d = 0 is the prior: no second run).
    forms = resolve_forms(config)
    record["guidance_forms"] = forms
    ours = {form: Method(OURS_METHODS[form], config.prior, domain=config.domain, allow_pickle=config.allow_pickle,
                         prior_config=config.prior_config, guidance_form=form) for form in forms}
    sweep = Sweep(list(config.domain_guidance_scales), list(config.guidance_scales))
    grid = sweep.weights(next(iter(ours.values())), conditional=True)
    has_reference = "decoupled" in forms and any(_is_reference({"w_d": wd, "w_c": wc}, goal) for wd, wc in grid)
    methods = [*ours.values()] + ([] if has_reference else [_prior_method(config, goal.reference_w_c)])
    info(f"probe: {len(grid) * len(forms) + (not has_reference)} settings x {config.num_images} images on "
         f"{len(probe_prompts)} prompts")
    rows = _phase("probe", out, probe_prompts, methods, sweep, config, protocol, goal, preset, extractor)
    record["probe"] = {"prompts": probe_prompts, "rows": rows}

    # 2. Choose.
    try:
        choice = choose(rows, goal)
    except NoFeasibleSetting as err:
        record |= {"probe": {**record["probe"], "table": _table(err.choice.rows, goal, config.num_images, shares)},
                   "choice": None, "best_available": _summary(err.choice.best_available, goal, err.choice.reference,
                                                              config.num_images, shares),
                   "error": str(err), "seconds": round(time.time() - start, 1)}
        _write(out, record, err.choice, goal, None)
        raise
    chosen = choice.chosen
    assert chosen is not None
    info(f"chose {form_of(chosen)} w_d = {chosen['w_d']:g}, w_c = {chosen['w_c']:g}; validating on "
         f"{len(validation_prompts)} held-out prompts")

    # 3. Validate: the chosen form and weights and the prior's reference on the held-out prompts.
    picked = dataclasses.replace(ours[form_of(chosen)], domain_guidance_scales=[chosen["w_d"]],
                                 guidance_scales=[chosen["w_c"]])
    methods = [picked] + ([] if _is_reference(chosen, goal) else [_prior_method(config, goal.reference_w_c)])
    held = _phase("validation", out, validation_prompts, methods, sweep, config, protocol, goal, preset, extractor)
    validation = _validate(choice, held, goal, config.num_images, shares)
    validation["prompts"] = validation_prompts
    validation["rows"] = held
    record |= {"probe": {**record["probe"], "table": _table(choice.rows, goal, config.num_images, shares)},
               "choice": _summary(chosen, goal, choice.reference, config.num_images, shares),
               "reference": _summary(choice.reference, goal, choice.reference, config.num_images, shares),
               "validation": validation, "seconds": round(time.time() - start, 1)}
    stored = _store(config, record, goal, out) if config.store else None
    record["stored"] = None if stored is None else str(stored)
    _write(out, record, choice, goal, validation)
    return TuneResult(out, choice, validation, stored)


def resolve_forms(config: TuneConfig) -> list[str]:
    """``--guidance-forms`` with ``auto`` resolved from the prior's family (read from its config, no weights): the two
    domain-side forms on Stable Diffusion 1.x/2.x, where the prior's text pathway can be put into the domain model
    (domain-text-bands wins where the domain's layout differs from the prior's, domain-text where its colours do:
    docs/RESULTS.md), else decoupled (Eq. A). Duplicates dropped, order kept."""
    from .families import detect_family

    forms: list[str] = []
    for form in config.guidance_forms or ["auto"]:
        if form == "auto":
            sd = detect_family(config.prior, config.prior_config).name == "sd"
            resolved = ["domain-text", "domain-text-bands"] if sd else ["decoupled"]
        else:
            resolved = [form]
        forms += [f for f in resolved if f not in forms]
    return forms


def _store(config: TuneConfig, record: dict[str, Any], goal: Goal, out: Path) -> Path | None:
    """The choice, written beside the domain model's weights (`loading.write_tuned_guidance`); a domain that is no
    local folder, or a folder we may not write, keeps the choice in tune.json only, with a warning."""
    import datetime

    from .console import info
    from .guidance import DEFAULT_LAYOUT_GUIDANCE_SCALE, LAYOUT_SIGMA
    from .loading import read_tuned_guidance, write_tuned_guidance
    from .version import __version__

    choice, v = record["choice"], record["validation"]
    folder = Path(config.domain).expanduser()
    if not folder.is_dir():
        info(f"warning: --domain {config.domain} is no local folder; the choice stays in {out / 'tune.json'} only")
        return None
    stored = {"guidance_form": choice["guidance_form"], "domain_guidance_scale": choice["w_d"],
              "guidance_scale": choice["w_c"]}
    if choice["guidance_form"] == "domain-text-bands":  # the pipeline's defaults, with which the probe sampled
        stored |= {"layout_guidance_scale": DEFAULT_LAYOUT_GUIDANCE_SCALE, "layout_sigma": LAYOUT_SIGMA}
    stored |= {"chosen_by": "indomain tune", "goal": goal.describe(), "prior": config.prior,
               "tune_output": str(out.resolve()), "probe": {k: choice[k] for k in ("control", "kept", "fidelity")},
               "validation": {"control": v["measured"]["control"], "kept": v["measured"]["kept"],
                              "fidelity": v["measured"]["fidelity"], "constraint_held": v["constraint_held"]},
               "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "indomain_version": __version__}
    try:
        earlier = read_tuned_guidance(folder)
    except ValueError:
        earlier = None
    try:
        path = write_tuned_guidance(folder, stored)
    except OSError as e:
        info(f"warning: could not store the choice in {folder} ({e}); it stays in {out / 'tune.json'}")
        return None
    if earlier is not None:
        info(f"replaced the earlier stored choice ({earlier['guidance_form']} w_d = {earlier['domain_guidance_scale']:g}, "
             f"w_c = {earlier['guidance_scale']:g}, from {earlier.get('tune_output')})")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Prediction against measurement
# ----------------------------------------------------------------------------------------------------------------


def _se(row: Mapping[str, Any], column: str, n: int, shares: set[str]) -> float:
    """Binomial SE of a share column; else the metric's own ``<column>_std`` (KID's subset spread) if any; else NaN."""
    if column in shares and is_finite_number(row.get(column)):
        return binomial_se(row[column], n)
    std = row.get(f"{column}_std")
    return std if is_finite_number(std) else math.nan


def _summary(row: Mapping[str, Any] | None, goal: Goal, reference: Mapping[str, Any], n: int,
             shares: set[str]) -> dict[str, Any] | None:
    """One setting's goal numbers: control (SE), kept share of the prior's control (delta-method SE), fidelity."""
    if row is None:
        return None
    c, c0 = row.get(goal.control, math.nan), reference[goal.control]
    se_c, se_c0 = _se(row, goal.control, n, shares), _se(reference, goal.control, n, shares)
    kept = c / c0 if is_finite_number(c) and is_finite_number(c0) and c0 else math.nan
    if row is reference or _is_reference(row, goal):
        se_kept = 0.0  # the reference against itself (same images)
    else:
        se_kept = abs(kept) * math.sqrt((se_c / c) ** 2 + (se_c0 / c0) ** 2) if is_finite_number(kept) and c else math.nan
    return {"method": row.get("method"), "guidance_form": None if row.get("method") == PRIOR else form_of(row),
            "w_d": row["w_d"], "w_c": row["w_c"], "setting": row.get("setting"), "n": n,
            "control": c, "control_se": se_c, "kept": kept, "kept_se": se_kept,
            "fidelity": row.get(goal.fidelity, math.nan), "fidelity_se": _se(row, goal.fidelity, n, shares)}


def _table(rows: Sequence[Mapping[str, Any]], goal: Goal, n: int, shares: set[str]) -> list[dict[str, Any]]:
    reference = _find_reference(rows, goal)
    return [{**_summary(r, goal, reference, n, shares), "feasible": r["feasible"]} for r in rows]  # type: ignore[dict-item]


def _gain(goal: Goal, prior: float, chosen: float) -> float:
    """How much better the chosen fidelity is than the prior's (positive = better, in the column's units)."""
    return (chosen - prior) if goal.fidelity_higher_is_better else (prior - chosen)


def _validate(choice: Choice, held: Sequence[Mapping[str, Any]], goal: Goal, n: int, shares: set[str]) -> dict[str, Any]:
    """The probe's prediction for the chosen weights next to what the held-out prompts measured."""
    chosen = choice.chosen
    assert chosen is not None
    held_ref = _find_reference(held, goal)
    held_chosen = next(r for r in held if r.get("method") == chosen.get("method"))
    predicted = _summary(chosen, goal, choice.reference, n, shares)
    measured = _summary(held_chosen, goal, held_ref, n, shares)
    prior_probe = _summary(choice.reference, goal, choice.reference, n, shares)
    prior_held = _summary(held_ref, goal, held_ref, n, shares)
    assert predicted and measured and prior_probe and prior_held
    diff = measured["kept"] - predicted["kept"]
    se_diff = math.hypot(predicted["kept_se"], measured["kept_se"])
    gain_predicted = _gain(goal, prior_probe["fidelity"], predicted["fidelity"])
    gain_measured = _gain(goal, prior_held["fidelity"], measured["fidelity"])
    return {
        "predicted": predicted, "measured": measured, "prior_probe": prior_probe, "prior_validation": prior_held,
        "constraint_held": bool(is_finite_number(measured["kept"]) and measured["kept"] >= goal.keep),
        "kept_difference": diff, "kept_difference_se": se_diff,
        # within two standard errors of the prediction (only where the SEs are known)
        "control_as_predicted": bool(abs(diff) <= 2 * se_diff) if is_finite_number(se_diff) and se_diff > 0 else None,
        "fidelity_gain_predicted": gain_predicted, "fidelity_gain_measured": gain_measured,
        "fidelity_better_than_prior": bool(is_finite_number(gain_measured) and gain_measured > 0),
    }


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


def _fmt(value: Any, se: Any = None, sign: bool = False) -> str:
    if not is_finite_number(value):
        return "n/a" if value is None else str(value)
    return f"{value:{'+' if sign else ''}.3f}" + (f" ± {se:.3f}" if is_finite_number(se) and se > 0 else "")


def _markdown(record: dict[str, Any], goal: Goal) -> str:
    """tune.md: the goal, the choice, the validation side by side, the probe table."""
    lines = ["# indomain tune", "", f"Command: `{record['command']}`", "", f"Goal: {goal.describe()}.", "",
             f"N = {record['n_per_setting']} images per setting (probe and validation alike); ± = binomial standard "
             f"error for share columns ({', '.join(record['share_columns']) or 'none'}; 0 at a share of 0 or 1; it "
             "counts the N images as independent, which understates the error when prompts repeat), the metric's own "
             "std otherwise; kept = control / the prior's on the same prompts (± by the delta method).",
             ""]
    choice = record.get("choice")
    if choice is None:
        best = record.get("best_available")
        lines += [f"**No setting meets the goal.** {record['error']}", ""]
        if best:
            lines += [f"Best available: {best['guidance_form']} w_d = {best['w_d']:g}, w_c = {best['w_c']:g} (kept "
                      f"{_fmt(best['kept'])}, "
                      f"{goal.fidelity} {_fmt(best['fidelity'])}).", ""]
    else:
        v = record["validation"]
        stored = (f" Stored with the domain model: `{record['stored']}` (`indomain generate` uses it when no form or "
                  "weight is given)." if record.get("stored") else " Not stored with the domain model.")
        lines += [f"**Chosen: {choice['guidance_form']}, w_d = {choice['w_d']:g}, w_c = {choice['w_c']:g}.**{stored}", "",
                  f"## Validation on {len(v['prompts'])} held-out prompts", "",
                  "| setting | | " + f"{goal.control} | kept | {goal.fidelity} |", "|---|---|---|---|---|"]
        for label, key in (("prior", "prior_probe"), ("chosen", "predicted"), ("prior", "prior_validation"),
                           ("chosen", "measured")):
            s = v[key]
            where = "probe (predicted)" if key in ("prior_probe", "predicted") else "held out (measured)"
            name = "prior" if s["method"] == PRIOR else f"{label} ({s['guidance_form']})"
            lines.append(f"| {name} w_d={s['w_d']:g} w_c={s['w_c']:g} | {where} | {_fmt(s['control'], s['control_se'])} "
                         f"| {_fmt(s['kept'], s['kept_se'])} | {_fmt(s['fidelity'], s['fidelity_se'])} |")
        agree = {True: "yes", False: "no", None: "unknown (no standard error)"}[v["control_as_predicted"]]
        lines += ["", f"- Control constraint held on held-out prompts: **{'yes' if v['constraint_held'] else 'no'}** "
                  f"(kept {_fmt(v['measured']['kept'], v['measured']['kept_se'])}, goal >= {goal.keep:g}).",
                  f"- Kept control as predicted (within 2 SE): {agree} (measured - predicted: "
                  f"{_fmt(v['kept_difference'], v['kept_difference_se'], sign=True)}).",
                  f"- Fidelity gain over the prior ({goal.fidelity}): predicted {_fmt(v['fidelity_gain_predicted'], sign=True)}, "
                  f"measured {_fmt(v['fidelity_gain_measured'], sign=True)}; better than the prior on held-out prompts: "
                  f"**{'yes' if v['fidelity_better_than_prior'] else 'no'}**.", ""]
    lines += ["## Probe", "", f"{len(record['probe']['prompts'])} prompts. Plot: `tune.png`.", "",
              f"| method | w_d | w_c | {goal.control} | kept | {goal.fidelity} | keeps control |",
              "|---|---|---|---|---|---|---|"]
    for s in record["probe"]["table"]:
        mark = " **(chosen)**" if choice and s["setting"] == choice["setting"] else ""
        lines.append(f"| {s['method'] or ''} | {s['w_d']:g} | {s['w_c']:g} | {_fmt(s['control'], s['control_se'])} | "
                     f"{_fmt(s['kept'], s['kept_se'])} | "
                     f"{_fmt(s['fidelity'], s['fidelity_se'])} | "
                     f"{'(the reference)' if s['method'] == PRIOR else 'yes' if s['feasible'] else 'no'}{mark} |")
    lines += ["", f"Wall time: {record['seconds'] / 60:.1f} min. Images, tables and reports: `probe/`, `validation/`.",
              ""]
    return "\n".join(lines)


def plot_probe(choice: Choice, goal: Goal, path: str | os.PathLike, validation: Mapping[str, Any] | None = None) -> Path:
    """tune.png: fidelity (y) against control as a share of the prior's (x, so that probe and held-out prompts share
    the axis) over the probe grid; settings that keep the control filled, the others hollow, the prior a star, the
    choice ringed, the goal's floor dashed; the held-out prior and choice in orange, an arrow between them."""
    from .report import label_weights, new_plot, save_plot

    fig, ax = new_plot()
    points = [r for r in choice.rows if is_finite_number(r.get("kept")) and is_finite_number(r.get(goal.fidelity))
              and r.get("method") != PRIOR]
    forms = list(dict.fromkeys(form_of(r) for r in points))
    for form, colour in zip(forms, ("tab:blue", "tab:green", "tab:purple")):
        name = f"{form}: " if len(forms) > 1 else ""
        for feasible, style in ((True, dict(color=colour, label=f"{name}keeps >= {goal.keep:g} of the prior's control")),
                                (False, dict(facecolors="none", edgecolors=colour, label=f"{name}loses control"))):
            sel = [r for r in points if r["feasible"] is feasible and form_of(r) == form]
            if sel:
                ax.scatter([r["kept"] for r in sel], [r[goal.fidelity] for r in sel], s=30, zorder=3, **style)
    label_weights(ax, points, "kept", goal.fidelity)
    ref = choice.reference
    ax.scatter([1.0], [ref[goal.fidelity]], marker="*", s=160, color="black", zorder=4,
               label=f"prior (w_d 0, w_c {goal.reference_w_c:g})")
    ax.axvline(goal.keep, color="tab:gray", linestyle="--", linewidth=1, label="the goal's control floor")
    shown = choice.chosen or choice.best_available
    if shown is not None:
        ax.scatter([shown["kept"]], [shown[goal.fidelity]], s=260, facecolors="none", edgecolors="tab:red",
                   linewidths=2, zorder=5, label="chosen" if choice.chosen else "best available (misses the goal)")
    if validation is not None:
        m, p = validation["measured"], validation["prior_validation"]
        ax.scatter([p["kept"], m["kept"]], [p["fidelity"], m["fidelity"]], marker="D", s=40, color="tab:orange",
                   zorder=5, label="held-out prompts: prior, chosen")
        ax.annotate("", (m["kept"], m["fidelity"]), (p["kept"], p["fidelity"]),
                    arrowprops=dict(arrowstyle="->", color="tab:orange"))
    arrow = "higher" if goal.fidelity_higher_is_better else "lower"
    return save_plot(fig, ax, path, xlabel=f"control: {goal.control} / the prior's ({ref[goal.control]:.3g} on the probe)",
                     ylabel=f"fidelity: {goal.fidelity} ({arrow} is better)",
                     title="probe grid, points labelled w_d/w_c", legend_size=7)


def _write(out: Path, record: dict[str, Any], choice: Choice, goal: Goal, validation: dict[str, Any] | None) -> None:
    import sys

    from .outputs import atomic_write_text, write_record

    plot_probe(choice, goal, out / "tune.png", validation)
    settings = record.pop("config")
    written = write_record(out / "tune.json", settings, **record)
    full = json.loads(written.read_text())
    full["command"] = " ".join(sys.argv)
    atomic_write_text(out / "tune.md", _markdown(full, goal))


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------

PROTOCOL_OPTIONS = ["scheduler", "steps", "batch_size", "height", "width", "dtype"]  # EvalConfig's, for both runs
METRIC_OPTIONS = ["real", "metrics", "resolution", "kid_subset_size", "kid_subsets", "stats_cache", "use_stats_cache",
                  "clip_model"]


@dataclass
class TuneCommand:
    """The flags of `indomain tune` around its `TuneConfig`: prompt files read into it, and the dry run."""

    prompts_file: str | None = option(None, "as --prompts, one per line (blank lines skipped)", metavar="FILE")
    probe_prompts_file: str | None = option(None, "as --probe-prompts, one per line (blank lines skipped)",
                                            metavar="FILE")
    validation_prompts_file: str | None = option(None, "as --validation-prompts, one per line (blank lines skipped)",
                                                 metavar="FILE")
    dry_run: bool = option(False, "print the resolved configuration as JSON and exit")


def add_parser(sub: argparse._SubParsersAction, help: str,
               presets: Mapping[str, Callable[[TuneConfig], TunePreset]] | None = None) -> None:
    """The `indomain tune` parser; ``presets`` name the scorers ``--scorer`` may pick (the CLI passes the emoji one)."""
    p = sub.add_parser("tune", help=help, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("models")
    add_options(g, TuneConfig, ["prior", "prior_config", "domain", "allow_pickle"])
    g = p.add_argument_group("goal")
    actions = add_options(g, TuneConfig, ["scorer", "control", "fidelity", "fidelity_higher_is_better", "keep",
                                          "reference_guidance_scale"])
    actions["scorer"].choices = list(presets or {})
    if presets:
        actions["scorer"].help += f"; one of: {', '.join(presets)}"
    g = p.add_argument_group("prompts (probe and held-out validation)")
    for name in ("prompts", "probe_prompts", "validation_prompts"):
        one = g.add_mutually_exclusive_group()  # --X or --X-file
        add_options(one, TuneConfig, [name])
        add_options(one, TuneCommand, [f"{name}_file"])
    add_options(g, TuneConfig, ["num_probe_prompts", "num_validation_prompts"])
    g = p.add_argument_group("grid and sampling")
    add_options(g, TuneConfig, ["guidance_forms", "domain_guidance_scales", "guidance_scales", "num_images", "seed"])
    add_options(g, EvalConfig, PROTOCOL_OPTIONS)
    g = p.add_argument_group("metrics (besides --scorer's)")
    add_options(g, EvalConfig, METRIC_OPTIONS)
    from .evaluate import add_extractor_options

    add_extractor_options(g)
    g = p.add_argument_group("output")
    add_options(g, TuneConfig, ["out", "overwrite", "store"])
    add_options(g, TuneCommand, ["dry_run"])
    p.set_defaults(func=cmd_tune, tune_presets=dict(presets or {}))


def cmd_tune(args: argparse.Namespace) -> int:
    from .evaluate import extractor_from_args

    from .safeload import check_prior_config

    config = from_args(TuneConfig, args)
    check_prior_config(config.prior, config.prior_config)  # the flags first, as every command
    command = from_args(TuneCommand, args)
    for name in ("prompts", "probe_prompts", "validation_prompts"):
        path = getattr(command, f"{name}_file")
        if path:  # argparse lets only one of --X / --X-file through
            setattr(config, name, read_lines(path))
    protocol = from_args(EvalConfig, args)
    protocol = dataclasses.replace(protocol, prompts=None, clip_texts=None, plot_x=None, plot_y=None, overwrite=False)
    preset = args.tune_presets[config.scorer](config) if config.scorer else None
    if command.dry_run:
        goal, probe, validation = _resolve(config, protocol, preset)
        print(to_json({"config": dataclasses.asdict(config), "protocol": dataclasses.asdict(protocol),
                          "goal": dataclasses.asdict(goal), "guidance_forms": resolve_forms(config), "probe_prompts": probe, "validation_prompts": validation,
                          "share_columns": list(preset.share_columns) if preset else []}, indent=2, default=str))
        return 0
    _resolve(config, protocol, preset)  # fail on a bad goal or prompts before loading the feature network
    result = tune(config, protocol, preset=preset, extractor=extractor_from_args(args))
    chosen, v = result.choice.chosen, result.validation
    assert chosen is not None
    stored = f"; stored with the domain model in {result.stored}" if result.stored else ""
    print(f"chose {form_of(chosen)} w_d = {chosen['w_d']:g}, w_c = {chosen['w_c']:g}; held out: kept "
          f"{_fmt(v['measured']['kept'])} of the prior's control (predicted {_fmt(v['predicted']['kept'])}), constraint "
          f"{'held' if v['constraint_held'] else 'missed'}; wrote tune.json, tune.md, tune.png to {result.out}{stored}")
    return 0
