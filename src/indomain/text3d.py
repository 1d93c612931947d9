"""`indomain 3d`: text-to-3D by score distillation from a frozen prior plus a null-text domain model.

    indomain 3d --prior PRIOR --prompt "red apple" --out runs/apple                                  # plain SDS
    indomain 3d --prior PRIOR --domain DOMAIN --domain-guidance-scale 25 --prompt "red apple" \\
        --out runs/apple-d                                                                           # + domain term
    indomain 3d ... --out runs/apple --resume --steps 800                                            # continue a run

A run, in order: load the prior (and domain model) into an `InDomainPipeline`; build a `VoxelField` (a density blob
in an empty box); then one loop, each step a pure function of ``(seed, step)``: sample ``--batch-size`` random cameras,
render them at the prior's resolution, encode with the VAE, take the SDS gradient of `indomain.sds.ScoreDistillation`
(ε̂ of Eq. A: prior unconditional + w_d · domain + w_c · prompt), add the regularisers, Adam step. Every
``--save-every`` steps it writes a progress render (front, left, back, right) and its state; at the end a turntable
GIF and PNG. ``--out`` holds ``field.safetensors`` (weights, field config in its metadata), ``optimizer.safetensors``
(Adam moments), ``settings.json`` (every setting, the step reached, versions), ``log.jsonl``, ``progress/``,
``turntable.gif`` and ``turntable.png``. Nothing is pickled; ``--resume`` continues exactly where the state stops.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any, ClassVar, TYPE_CHECKING

from .cliargs import DryRun, add_options, finite_float, from_args, option, positive_float, positive_int, require_domain_for_weight
from .console import progress
from .devices import resolve_device
from .numerics import require_finite
from .outputs import (atomic_path, claim_output_dir, close_run, make_grid, read_json_object, record_outputs,
                      to_json, truncate_log, write_record)

if TYPE_CHECKING:  # torch, diffusers and the renderer load when a run starts, so `indomain 3d --help` is instant
    import torch

    from .nerf import Cameras, VoxelField
    from .sds import SDSConfig

# settings that fix the field's shape and meaning: a resumed run must keep them
FIELD_KEYS = ("grid_resolution", "bound", "blob_density", "blob_radius", "seed")


@dataclass
class Text3DConfig:
    """Every setting of `indomain 3d` (each field is also its option ``--field-name``); saved in settings.json."""

    # the command's one line in `indomain --help` (cli.COMMANDS derives it from here)
    command_help: ClassVar[str] = ("text-to-3D: optimise a small voxel radiance field by score distillation (prior + "
                                   "domain model)")

    prior: str = option(help="prior pipeline: a local diffusers folder or a hub id, or a single-file .safetensors "
                        "checkpoint (with --prior-config)")
    prompt: str = option(help="what to make, e.g. 'red apple'")
    out: str = option(help="output folder (new, empty, or an earlier `indomain 3d` run with --resume/--overwrite)")
    prior_config: str | None = option(None, "for a single-file --prior: a diffusers folder of the same model (its "
                                      "configs, tokenizers and scheduler; its weights are not read)", metavar="DIR")
    domain: str | None = option(None, "null-text domain model folder written by `indomain train` (default: none)")
    domain_guidance_scale: float = option(0.0, "domain weight w_d (0: plain SDS from the prior)", type=finite_float,
                                          metavar="W", aliases=["--domain-scale"])
    guidance_scale: float = option(25.0, "control weight w_c on the prompt; diffusers' convention eps_u + w (eps_c - "
                                   "eps_u), so threestudio's guidance_scale s is w_c = s + 1", type=finite_float)
    steps: int = option(400, "optimisation steps (in all, counting those of a resumed run)", type=positive_int)
    batch_size: int = option(1, "random views per step", type=positive_int)
    learning_rate: float = option(0.05, "Adam learning rate of the voxel grids", type=positive_float)
    resolution: int | None = option(None, "render size in pixels (default: the prior's native size)", type=positive_int)
    grid_resolution: int = option(32, "voxels per side of the density and colour grids", type=positive_int)
    bound: float = option(1.0, "half-size of the scene box [-bound, bound]^3", type=positive_float)
    blob_density: float = option(10.0, "density of the initial blob at its centre (0: start from empty space)",
                                 type=finite_float)
    blob_radius: float = option(0.6, "radius of the initial blob", type=positive_float)
    num_samples: int = option(48, "samples per ray", type=positive_int)
    elevation_range: list[float] = option([-10.0, 30.0], "camera elevation range in degrees", type=finite_float,
                                          nargs=2, metavar="DEG")
    azimuth_range: list[float] = option([-180.0, 180.0], "camera azimuth range in degrees (0 = front)",
                                        type=finite_float, nargs=2, metavar="DEG")
    distance_range: list[float] = option([2.0, 2.4], "camera distance range", type=positive_float, nargs=2,
                                         metavar="D")
    fovy_range: list[float] = option([35.0, 45.0], "vertical field-of-view range in degrees", type=positive_float,
                                     nargs=2, metavar="DEG")
    min_step_percent: float = option(0.02, "smallest SDS timestep, as a fraction of T", type=finite_float)
    max_step_percent: float = option(0.98, "largest SDS timestep, as a fraction of T", type=finite_float)
    max_step_percent_end: float | None = option(None, "anneal the largest timestep linearly to this by the last step "
                                                "(default: no annealing)", type=finite_float)
    weighting: str = option("sds", "SDS weighting w(t): sds = 1 - alphabar_t, uniform, fantasia3d",
                            choices=["sds", "uniform", "fantasia3d"])  # indomain.sds.WEIGHTINGS
    view_dependent: bool = option(True, "view-dependent prompts from the camera's azimuth; --no-view-dependent uses "
                                  "the prompt as given")
    view_template: str = option("{view} view of {prompt}", "view-dependent prompt; {view} is front, side, back or "
                                "overhead")
    negative_prompt: str = option("", "the prior's unconditional prompt (default: empty)")
    grad_clip: float | None = option(None, "clip the SDS gradient element-wise (default: no clipping)",
                                     type=positive_float)
    lambda_opacity: float = option(0.0, "weight of the mean rendered opacity (a sparsity term: less stray density)",
                                   type=finite_float)
    lambda_entropy: float = option(0.01, "weight of the opacity's binary entropy (pixels either solid or empty)",
                                   type=finite_float)
    lambda_tv: float = option(1.0, "weight of the grids' total variation (smooth density and colour)",
                              type=finite_float)
    save_every: int = option(100, "write a progress render and the resumable state every N steps", type=positive_int)
    turntable_frames: int = option(24, "frames of the turntable GIF", type=positive_int)
    turntable_elevation: float = option(10.0, "camera elevation of the turntable and progress renders, in degrees",
                                        type=finite_float)
    seed: int = option(0, "seed of the field's initial colours and of every step's cameras, timesteps and noise")
    device: str = option("auto", "torch device: auto, cpu, cuda, ...")
    resume: bool = option(False, "continue the run in --out from its saved state")
    overwrite: bool = option(False, "replace an earlier `indomain 3d` run in --out")

    def sds_config(self) -> SDSConfig:
        from .sds import SDSConfig

        names = {f.name for f in dataclasses.fields(SDSConfig)}
        return SDSConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def make_field(self) -> VoxelField:
        from .nerf import VoxelField

        return VoxelField(self.grid_resolution, self.bound, self.blob_density, self.blob_radius, seed=self.seed)


# ----------------------------------------------------------------------------------------------------
# State: the field's weights and Adam's moments in safetensors, the step in their metadata and in settings.json


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """`atomic_path`, with safetensors' write errors (a full disk, a folder made read-only) as an OSError naming the file."""
    from safetensors import SafetensorError

    try:
        with atomic_path(path) as tmp:
            yield tmp
    except SafetensorError as e:
        raise OSError(f"{path}: cannot be written ({e})") from None


def save_field(field: VoxelField, path: Path, step: int) -> None:
    """The field's weights, with its constructor arguments and the step in the metadata."""
    from safetensors.torch import save_file

    meta = {"field_config": to_json(field.field_config()), "step": str(step)}
    with _writing(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in field.state_dict().items()}, str(tmp), metadata=meta)


MAX_GRID = 512  # voxels per side: 512^3 x 4 floats is 2 GiB, more than any field this renderer can optimise


def load_field(path: str | Path) -> tuple[VoxelField, int]:
    """A `VoxelField` from ``field.safetensors`` (as `indomain 3d` writes it) and the step it was saved at.

    The header is checked against the field's settings before anything is allocated: a crafted file cannot ask for
    more memory than its own tensors hold."""
    import inspect

    from .nerf import VoxelField
    from .safeload import read_safetensors, safetensors_header

    shapes, meta = safetensors_header(path, "the 3-D field")
    try:
        cfg = json.loads(meta["field_config"])
        step = int(meta.get("step", 0))
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{path}: not a field written by `indomain 3d` (no readable field_config and step in its "
                         "metadata)") from None
    allowed = set(inspect.signature(VoxelField).parameters)
    if not isinstance(cfg, dict) or not set(cfg) <= allowed:
        raise ValueError(f"{path}: its field_config is not a field's settings (expected keys among {sorted(allowed)})")
    g = cfg.get("resolution", 32)
    if not isinstance(g, int) or not 2 <= g <= MAX_GRID:
        raise ValueError(f"{path}: field_config resolution must be a whole number in [2, {MAX_GRID}], got {g!r}")
    expected = {"density": (1, 1, g, g, g), "color": (1, 3, g, g, g)}
    if shapes != expected:
        raise ValueError(f"{path}: its tensors {shapes} do not match a field of resolution {g} ({expected})")
    tensors, _ = read_safetensors(path, "the 3-D field")
    try:
        field = VoxelField(**cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: field_config does not make a field: {e}") from None
    field.load_state_dict(tensors)
    return field, step


def save_optimizer(optimizer: torch.optim.Adam, field: VoxelField, path: Path, step: int) -> None:
    """Adam's per-parameter moments and step counts, keyed by parameter name."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for name, param in field.named_parameters():
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"{name}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    with _writing(path) as tmp:
        save_file(tensors, str(tmp), metadata={"step": str(step)})


def load_optimizer(optimizer: torch.optim.Adam, field: VoxelField, path: Path) -> int:
    """Restore what `save_optimizer` wrote; returns its step. Every moment must have its parameter's shape."""
    from .safeload import read_safetensors, safetensors_header

    shapes, meta = safetensors_header(path, "the optimizer state")
    params = dict(field.named_parameters())
    for key, shape in shapes.items():
        name, _, kind = key.rpartition(".")
        want = tuple(params[name].shape) if name in params and kind in ("exp_avg", "exp_avg_sq") else ()
        if name not in params or kind not in ("exp_avg", "exp_avg_sq", "step") or tuple(shape) != want:
            raise ValueError(f"{path}: {key} {tuple(shape)} is not an Adam state of this field; the saved state is damaged")
    saved, _ = read_safetensors(path, "the optimizer state")
    try:
        step = int(meta.get("step", -1))
    except ValueError:
        step = -1
    for name, param in field.named_parameters():
        state = {key[len(name) + 1:]: v for key, v in saved.items() if key.startswith(name + ".")}
        if state:
            optimizer.state[param] = {k: v.to(param.device) if k != "step" else v for k, v in state.items()}
    return step


# ----------------------------------------------------------------------------------------------------
# The run


def _step_generator(seed: int, step: int) -> torch.Generator:
    """Every random draw of a step comes from here, so a resumed run repeats an uninterrupted one exactly."""
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def check_inputs(config: Text3DConfig) -> None:
    """Refuse bad settings before anything is loaded or written; each error names the option."""
    for name in ("elevation_range", "azimuth_range", "distance_range", "fovy_range"):
        low, high = getattr(config, name)
        if low > high:
            raise ValueError(f"--{name.replace('_', '-')} must be LOW HIGH with LOW <= HIGH, got {low} {high}")
    if config.distance_range[0] <= config.bound * 3**0.5:
        raise ValueError(f"--distance-range starts at {config.distance_range[0]}, inside the scene box (corner at "
                         f"{config.bound * 3**0.5:.2f}); cameras must see the whole box")
    require_domain_for_weight(config.domain_guidance_scale, config.domain)
    from .safeload import check_prior_config

    check_prior_config(config.prior, config.prior_config)
    if config.view_dependent:
        try:
            config.view_template.format(view="front", prompt=config.prompt)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"--view-template {config.view_template!r} is not a template with {{view}} and {{prompt}} "
                             f"only ({type(e).__name__}: {e}); write literal braces as {{{{ and }}}}") from None
    config.sds_config()  # its own checks (timestep range, weighting)


def _resume_state(config: Text3DConfig, out: Path) -> dict[str, Any]:
    """The saved run's settings, after checking that they fit this one."""
    settings_file = out / "settings.json"
    if not settings_file.is_file() or not (out / "field.safetensors").is_file():
        raise ValueError(f"--resume: {str(out)!r} holds no saved state (settings.json and field.safetensors)")
    record = read_json_object(settings_file, "the saved run's settings")
    saved = record.get("settings")
    if not isinstance(saved, dict) or not isinstance(record.get("step"), int):
        raise ValueError(f"--resume: {settings_file} is not the settings record of an `indomain 3d` run (no settings "
                         "and step); the saved state is damaged: start over in another folder")
    changed = [k for k in FIELD_KEYS if saved.get(k) != getattr(config, k)]
    if changed:
        raise ValueError(f"--resume: the run in {str(out)!r} used different {', '.join('--' + k.replace('_', '-') for k in changed)} "
                         f"({', '.join(f'{saved.get(k)!r}' for k in changed)}); resume with the same values")
    return record


def render_views(field: VoxelField, cameras: Cameras, resolution: int, num_samples: int) -> torch.Tensor:
    """Deterministic renders (N, 3, H, W) in [0, 1], without gradient."""
    import torch

    from .nerf import render

    with torch.no_grad():
        return render(field, cameras, resolution, resolution, num_samples).rgb


def _upscaled_grid(images: torch.Tensor, ncols: int, resolution: int) -> Any:
    from .nerf import tensor_to_pil

    scale = max(1, 128 // resolution)
    pil = [im.resize((resolution * scale,) * 2, 0) for im in tensor_to_pil(images)]
    return make_grid(pil, ncols=ncols)


def write_turntable(field: VoxelField, config: Text3DConfig, out: Path, resolution: int) -> Path:
    """``turntable.gif`` (``turntable_frames`` frames, one turn from the front) and ``turntable.png`` (8 of them)."""
    from .nerf import orbit_cameras, tensor_to_pil

    cams = orbit_cameras(config.turntable_frames, elevation=config.turntable_elevation,
                         distance=sum(config.distance_range) / 2, fovy=sum(config.fovy_range) / 2)
    images = render_views(field, cams, resolution, config.num_samples)
    scale = max(1, 128 // resolution)
    frames = [im.resize((resolution * scale,) * 2, 0) for im in tensor_to_pil(images)]
    with atomic_path(out / "turntable.gif") as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=120, loop=0)
    strip = orbit_cameras(8, elevation=config.turntable_elevation, distance=sum(config.distance_range) / 2,
                          fovy=sum(config.fovy_range) / 2)
    with atomic_path(out / "turntable.png") as tmp:
        _upscaled_grid(render_views(field, strip, resolution, config.num_samples), 8, resolution).save(tmp, format="PNG")
    return out / "turntable.gif"


def text_to_3d(config: Text3DConfig, pipe: Any = None) -> Path:
    """Optimise a `VoxelField` for ``config.prompt``; returns the output folder. ``pipe`` replaces loading (tests)."""
    # 1. Check inputs, then claim the output folder
    check_inputs(config)
    device = resolve_device(config.device)
    if config.resume and config.overwrite:
        raise ValueError("--resume and --overwrite cannot be combined: resume the run in --out, or replace it")
    record = _resume_state(config, Path(config.out)) if config.resume else None
    out = claim_output_dir(config.out, "3d", overwrite=config.overwrite, reuse=config.resume,
                           inputs={"--prior": config.prior, "--prior-config": config.prior_config, "--domain": config.domain})
    try:
        return _text_to_3d(config, pipe, device, record, out)
    finally:
        close_run(out)


def _text_to_3d(config: Text3DConfig, pipe: Any, device: Any, record: dict | None, out: Path) -> Path:
    import torch

    from .nerf import orbit_cameras, render, sample_cameras
    from .pipeline import InDomainPipeline
    from .sds import ScoreDistillation

    # 2. Models: the frozen prior (+ domain model) and the guidance around them
    if pipe is None:
        single = {"config": config.prior_config} if config.prior_config else {}
        pipe = InDomainPipeline.from_pretrained(config.prior, domain_unet=config.domain, **single)
    pipe.to(device)
    guidance = ScoreDistillation(pipe, config.sds_config())
    resolution = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    if resolution % pipe.vae_scale_factor:
        raise ValueError(f"--resolution must be a multiple of the VAE factor {pipe.vae_scale_factor}, got {resolution}")

    # 3. The field and its optimizer, fresh or from the saved state
    field = config.make_field().to(device)
    optimizer = torch.optim.Adam(field.parameters(), lr=config.learning_rate, betas=(0.9, 0.99), eps=1e-15)
    step = 0
    if record is not None:
        saved, step = load_field(out / "field.safetensors")
        if saved.field_config() != field.field_config():
            raise ValueError(f"--resume: {out / 'field.safetensors'} holds a field {saved.field_config()} that does not "
                             f"match this run's {field.field_config()}; the saved state is damaged")
        field.load_state_dict(saved.state_dict())
        opt_step = load_optimizer(optimizer, field, out / "optimizer.safetensors")
        if not step == opt_step == record.get("step"):
            raise ValueError(f"--resume: the saved state in {str(out)!r} is inconsistent (field at step {step}, "
                             f"optimizer at {opt_step}, settings.json at {record.get('step')}); start over with --overwrite")
        truncate_log(out / "log.jsonl", step)

    def save(step: int, seconds: float) -> None:
        require_finite(list(field.parameters()), f"the 3-D field at step {step}")  # e.g. a learning rate far too high
        save_field(field, out / "field.safetensors", step)
        save_optimizer(optimizer, field, out / "optimizer.safetensors", step)
        write_record(out / "settings.json", dataclasses.asdict(config), step=step, seconds=round(seconds, 2),
                     resolved={"device": device, "resolution": resolution, "field": field.field_config(),
                               "guidance_scale_convention": "eps_u + w (eps_k - eps_u) (diffusers, stable-dreamfusion)"})
        front = orbit_cameras(4, elevation=config.turntable_elevation, distance=sum(config.distance_range) / 2,
                              fovy=sum(config.fovy_range) / 2)
        (out / "progress").mkdir(exist_ok=True)
        _upscaled_grid(render_views(field, front, resolution, config.num_samples), 4, resolution).save(
            out / "progress" / f"step_{step:06d}.png")
        record_outputs(out, finished=False)

    # 4. The loop
    start, spent = time.time(), float(record.get("seconds", 0.0)) if record else 0.0
    bar = progress(total=config.steps, initial=step, desc="text-to-3D")
    try:
        with open(out / "log.jsonl", "a") as log:
            while step < config.steps:
                gen = _step_generator(config.seed, step)
                cams = sample_cameras(config.batch_size, gen, tuple(config.elevation_range), tuple(config.azimuth_range),
                                      tuple(config.distance_range), tuple(config.fovy_range))
                guidance.update_step(0, step, config.steps)
                rendered = render(field, cams, resolution, resolution, config.num_samples, background=1.0, generator=gen)
                result = guidance(rendered.rgb, config.prompt, cams.elevation, cams.azimuth, cams.distance, generator=gen)
                loss = result["loss_sds"] + _regularisers(rendered.opacity, field, config)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update()
                bar.set_postfix(grad=f"{result['grad_norm'].item():.3g}")
                log.write(to_json({"step": step, "loss_sds": result["loss_sds"].item(),
                                      "grad_norm": result["grad_norm"].item(), "t": result["timesteps"].tolist(),
                                      "opacity": rendered.opacity.mean().item()}) + "\n")
                if step % config.save_every == 0 or step == config.steps:
                    log.flush()
                    save(step, spent + time.time() - start)
    finally:
        bar.close()  # before any error line, so the two never share a line
    write_turntable(field, config, out, resolution)
    return out


def _regularisers(opacity: torch.Tensor, field: VoxelField, config: Text3DConfig) -> torch.Tensor:
    """Sparsity (mean opacity), binary entropy of the opacity and total variation, weighted by their lambdas."""
    loss = config.lambda_tv * field.total_variation()
    if config.lambda_opacity:
        loss = loss + config.lambda_opacity * opacity.mean()
    if config.lambda_entropy:
        a = opacity.clamp(1e-5, 1 - 1e-5)
        loss = loss + config.lambda_entropy * (-(a * a.log() + (1 - a) * (1 - a).log())).mean()
    return loss


# ----------------------------------------------------------------------------------------------------
# CLI


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("3d", help=help,
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, Text3DConfig)
    add_options(p, DryRun)
    p.set_defaults(func=cmd_text3d)


def cmd_text3d(args: argparse.Namespace) -> int:
    config = from_args(Text3DConfig, args)
    if from_args(DryRun, args).dry_run:
        print(to_json(dataclasses.asdict(config), indent=2))
        return 0
    out = text_to_3d(config)
    print(f"wrote turntable.gif, field.safetensors and settings.json to {out}")
    return 0
