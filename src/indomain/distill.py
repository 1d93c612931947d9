"""`indomain distill`: the in-domain guidance of Eq. A distilled into one UNet call per step.

    indomain distill --prior PRIOR --domain DOMAIN --images DIR --prompts prompts.txt --output OUT
    indomain distill ... --lora-rank 16                                   # a LoRA student (small files)
    indomain generate --prior PRIOR --distilled OUT --prompt "a cat"      # sample: one UNet call per step
    indomain distill ... --objective consistency                          # LCM-style: sample in 4-8 steps (LCMScheduler)

Guidance distillation (Meng et al., CVPR 2023). The teacher is the prior plus the domain model under Eq. A,
``eps_prior(x, ∅) + w_d (eps_domain(x) − eps_prior(x, ∅)) + w_c (eps_prior(x, c) − eps_prior(x, ∅))``, computed by
`indomain.guidance` (`indomain.student.teacher_prediction`). The student is the prior's UNet (all weights, or LoRA
adapters with ``--lora-rank``) with a zero-initialised embedding of ``(w_d, w_c)`` added to its timestep embedding
(`indomain.student.WeightEmbedding`), trained with plain MSE to output the teacher's guided prediction in one call.

Each training row: the empty prompt with probability ``--empty-prompt-share`` (so unconditional in-domain generation
is kept), else a prompt from ``--prompts`` (one per line); weights drawn uniformly from
``--domain-guidance-scale-range`` and ``--guidance-scale-range``. An empty-prompt row's input is a domain image from
the latent cache, noised as `indomain train` noises it; its embedding sees w_c = 0 (``--empty-prompt-label zero``; Eq.
A has no control term without a prompt), as sampling without a prompt does, so those rows have an input of their own.
Without ``--prompts`` every row is an empty-prompt row: an unconditional-only student, which refuses a prompt. A prompted row's input is, by default
(``--prompted-states teacher-paths``), a state on one of the teacher's own sampling paths for that prompt and those
weights (``--num-teacher-paths`` DDIM paths of ``--teacher-path-steps`` steps, drawn once at the start): the domain
images have no captions, so a domain image under a random prompt is a state the sampler never visits, where the
guided target is several times larger than on the sampler's path; a student trained on those states drifts from
the teacher where sampling goes (BENCHMARKS.md, issue #28). ``--prompted-states domain-images`` is that first recipe.
The run is `indomain.train`'s loop (accelerate, latent cache, EMA, checkpoints, exact ``--resume``, the claimed
output folder, validation grids); only the objective differs (`DistillObjective`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, TYPE_CHECKING

from .cliargs import DryRun, add_options, finite_float, from_args, option, positive_float, positive_int
from .console import progress
from .outputs import atomic_write_text, to_json
from .train import (LatentBatches, Objective, TrainConfig, _no_grad, _train_inputs, add_lora, denoising_loss,
                    noise_and_target, per_sample, train, validation_grids)

if TYPE_CHECKING:
    import torch


@dataclass(kw_only=True)
class DistillConfig(TrainConfig):
    """Every setting of a distillation run: `TrainConfig`'s (those `indomain distill` offers: `OPTIONS`) and the
    teacher, prompts and weight ranges. Saved as ``train_config.json``, and in each checkpoint."""

    # the command's one line in `indomain --help` (cli.COMMANDS derives it from here)
    command_help: ClassVar[str] = ("distil the prior + domain model's guidance (Eq. A) into a student that samples "
                                   "in one UNet call per step")

    domain: str = option(help="the teacher's domain model: a null-text domain model folder written by `indomain train`")
    prompts: str | None = option(None, "text file of training prompts, one per line (default: none: every row "
                                 "uses the empty prompt, an unconditional-only student)")
    empty_prompt_share: float = option(0.2, "share of training rows with the empty prompt, in [0, 1], so unconditional "
                                       "in-domain generation is kept", type=finite_float)
    domain_guidance_scale_range: list[float] = option([1.0, 5.0], "range of w_d the student learns (sampling refuses "
                                                      "weights outside it)", type=finite_float, nargs=2,
                                                      metavar=("LO", "HI"), aliases=["--domain-scale-range"])
    guidance_scale_range: list[float] = option([1.0, 6.0], "range of w_c the student learns (sampling refuses weights "
                                               "outside it)", type=finite_float, nargs=2, metavar=("LO", "HI"))
    objective: str = option("guidance", "what the student learns: guidance (the teacher's guided prediction, Meng et "
                            "al. 2023; any sampler, any step count) or consistency (LCM-style consistency distillation "
                            "on the teacher's guided DDIM steps; samples in 4-8 steps with diffusers' LCMScheduler)",
                            choices=["guidance", "consistency"])
    prompted_states: str = option("auto", "the noisy inputs of prompted rows: teacher-paths (states on the teacher's "
                                  "own DDIM sampling paths for the row's prompt and weights, where sampling goes), "
                                  "domain-images (a domain image under an unrelated prompt: states sampling never "
                                  "visits), or auto (teacher-paths; domain-images for --objective consistency)",
                                  choices=["auto", "teacher-paths", "domain-images"])
    empty_prompt_label: str = option("zero", "the w_c the weight embedding sees on an empty-prompt row, in training "
                                     "and in sampling without a prompt: zero (Eq. A has no control term without a "
                                     "prompt; a code of its own, so prompt-less sampling has its own input, apart from "
                                     "the prompted rows) or drawn (the row's w_c from the range, which its target "
                                     "ignores; the students before this option)", choices=["zero", "drawn"])
    num_teacher_paths: int = option(1024, "teacher-paths: how many sampling paths of the teacher to draw states "
                                    "from, each for one prompt (in turn) and one draw of the weights; drawn once at "
                                    "the start (the cost of that many teacher samples; held as float16 latents)",
                                    type=positive_int)
    teacher_path_steps: int = option(25, "teacher-paths: DDIM steps of each path (its states are the training "
                                     "inputs)", type=positive_int)
    num_ddim_timesteps: int = option(50, "--objective consistency: the teacher's DDIM schedule (skip k = 1000 / N); "
                                     "the student's LCMScheduler uses the same", type=positive_int)
    embedding_frequencies: int = option(8, "Fourier frequencies per weight in the weight embedding", type=positive_int)
    embedding_hidden_dim: int = option(256, "hidden width of the weight embedding's MLP", type=positive_int)
    embedding_learning_rate: float = option(1e-3, "learning rate of the weight embedding, which starts from zero (at "
                                            "--learning-rate it barely learned the weights in the emoji world: "
                                            "BENCHMARKS.md)", type=positive_float)

    def validate(self) -> None:
        super().validate()
        for name in ("domain_guidance_scale_range", "guidance_scale_range"):
            value = getattr(self, name)
            if len(value) != 2 or not all(math.isfinite(v) for v in value) or value[0] > value[1]:
                raise ValueError(f"--{name.replace('_', '-')} must be two finite numbers LO <= HI, got {value!r}")
        if self.objective not in ("guidance", "consistency"):
            raise ValueError(f"--objective must be guidance or consistency, got {self.objective!r}")
        if self.prompted_states not in ("auto", "teacher-paths", "domain-images"):
            raise ValueError(f"--prompted-states must be auto, teacher-paths or domain-images, got {self.prompted_states!r}")
        if self.prompted_states == "auto":  # resolved here, so train_config.json and resuming see the real choice
            self.prompted_states = "domain-images" if self.objective == "consistency" else "teacher-paths"
        if self.objective == "consistency" and self.prompted_states == "teacher-paths":
            raise ValueError("--prompted-states teacher-paths is for --objective guidance; a consistency student "
                             "learns from the domain images' states (--prompted-states auto or domain-images)")
        if self.empty_prompt_label not in ("zero", "drawn"):
            raise ValueError(f"--empty-prompt-label must be zero or drawn, got {self.empty_prompt_label!r}")
        if not 0.0 <= self.empty_prompt_share <= 1.0:
            raise ValueError(f"--empty-prompt-share must be in [0, 1], got {self.empty_prompt_share!r}")
        if self.prompts is not None:
            read_prompts(self.prompts)
        if not Path(self.domain).is_dir():
            raise ValueError(f"--domain {self.domain!r} is not a folder (a domain model written by `indomain train`)")
        if self.baseline or self.snr_gamma is not None or self.push_to_hub:
            raise ValueError("distillation has no --baseline, --snr-gamma or --push-to-hub")
        if self.validation_steps:
            for name, value, (lo, hi) in (("--domain-guidance-scale", self.domain_guidance_scale,
                                           self.domain_guidance_scale_range),
                                          ("--guidance-scale", self.guidance_scale, self.guidance_scale_range)):
                if not lo <= value <= hi:
                    raise ValueError(f"{name} {value} (the validation grids' weight) is outside the trained range "
                                     f"[{lo:g}, {hi:g}]")


# the options of `indomain distill`: TrainConfig's that apply to a student, then DistillConfig's own
OPTIONS = ("prior", "domain", "images", "prompts", "output", "objective", "prompted_states", "num_teacher_paths", "teacher_path_steps", "num_ddim_timesteps", "empty_prompt_share",
           "empty_prompt_label",
           "domain_guidance_scale_range", "guidance_scale_range", "lora_rank", "lora_alpha", "resolution",
           "center_crop",
           "random_flip", "train_batch_size", "gradient_accumulation_steps", "max_train_steps", "learning_rate",
           "lr_scheduler", "lr_warmup_steps", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon",
           "use_8bit_adam", "max_grad_norm", "use_ema", "ema_decay", "mixed_precision", "gradient_checkpointing",
           "checkpointing_steps", "checkpoints_total_limit", "resume", "overwrite", "validation_steps",
           "validation_prompts", "num_validation_images", "validation_inference_steps", "domain_guidance_scale",
           "guidance_scale", "embedding_frequencies", "embedding_hidden_dim", "embedding_learning_rate",
           "min_size_policy", "latent_cache", "seed", "allow_pickle", "log_every", "report_to",
           # the scale options of the training loop: sharded cache, on-the-fly encoding, epochs, datasets, processes
           "num_train_epochs", "cache_latents", "cache_batch_size", "cache_shard_size", "dataloader_num_workers",
           "ddp_timeout", "dataset_name", "dataset_dir", "dataset_split", "image_column")


def read_prompts(path: str | Path) -> list[str]:
    """The non-empty lines of a prompt file, with an error naming the file when there is none."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--prompts {str(path)!r} is not a file (a text file with one prompt per line)")
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as err:
        raise ValueError(f"--prompts {str(path)!r} is not UTF-8 text ({err})") from None
    if not prompts:
        raise ValueError(f"--prompts {str(path)!r} holds no prompt (one per line)")
    return prompts


class DistillObjective(Objective):
    """The student's loss: MSE to the teacher's Eq. A prediction at each row's prompt and weights."""

    command = "distill"
    same_on_resume = {"objective": "guidance", "prompted_states": "domain-images",  # their values before they existed
                      "empty_prompt_label": "drawn"}

    def __init__(self, config: DistillConfig) -> None:
        self.config = config

    def inputs(self, config: TrainConfig, out: Path) -> dict[str, Any]:
        return {**_train_inputs(config, out), "--domain": self.config.domain, "--prompts": self.config.prompts}

    @_no_grad
    def _encode_prompts(self, parts: dict, prior: Any, device: Any) -> None:
        """The empty prompt's and every training prompt's embeddings, once; the text encoder is freed afterwards."""
        import torch

        from .pipeline import InDomainPipeline

        text_parts = {k: parts.pop(k) for k in list(parts) if k.startswith(("text_encoder", "tokenizer"))}
        pipe = InDomainPipeline(vae=parts["vae"], unet=prior, scheduler=parts["noise_scheduler"], **text_parts)
        pipe.text_encoder.to(device)
        self.null = pipe.encode_negative(None, 1, device)  # (1, L, D): ∅, the empty prompt
        prompts = read_prompts(self.config.prompts) if self.config.prompts else []
        chunks = [pipe.encode_text(prompts[i:i + 64], device)
                  for i in progress(range(0, len(prompts), 64), desc="encoding prompts", unit="batch")]
        self.prompts = torch.cat(chunks) if chunks else self.null[:0]  # (P, L, D)

    def build(self, config: TrainConfig, parts: dict, device: Any) -> torch.nn.Module:
        from .loading import load_domain_model
        from .nulltext import NullTextUNet, check_compatible
        from .student import attach_weight_embedding

        family = parts["family"]
        if family.name != "sd":
            raise ValueError(f"indomain distill supports Stable Diffusion 1.x / 2.x priors; this prior is {family.title}")
        self.family, self.noise_scheduler = family, parts["noise_scheduler"]
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.config.objective == "consistency":
            from diffusers import LCMScheduler

            if self.prediction_type != "epsilon":
                raise ValueError(f"--objective consistency supports epsilon-prediction priors; this prior predicts "
                                 f"{self.prediction_type}")
            if not 1 <= self.config.num_ddim_timesteps <= self.noise_scheduler.config.num_train_timesteps:
                raise ValueError(f"--num-ddim-timesteps must be in [1, {self.noise_scheduler.config.num_train_timesteps}]")
            self.lcm = LCMScheduler.from_config(self.noise_scheduler.config,
                                                original_inference_steps=self.config.num_ddim_timesteps)
        prior = parts["unet"].to(device).eval()
        self._encode_prompts(parts, prior, device)
        domain = load_domain_model(self.config.domain, prior, allow_pickle=config.allow_pickle)
        if not isinstance(domain, NullTextUNet):
            raise ValueError(f"--domain {self.config.domain!r} is a text-conditioned fine-tune; the teacher needs a "
                             "null-text domain model (`indomain train` without --baseline)")
        check_compatible(prior, domain, self.prediction_type)
        student = copy.deepcopy(prior)  # before the teacher is frozen: a full student trains every weight
        self.prior, self.domain = prior.requires_grad_(False), domain.to(device).eval().requires_grad_(False)
        self.paths = self._teacher_paths(parts["vae"], device) if self.uses_paths() else None
        self.lora = add_lora(student, config) if config.lora_rank else None
        self.embedding = attach_weight_embedding(student, self.config.embedding_frequencies,
                                                 self.config.embedding_hidden_dim, config.seed)  # trained in both modes
        return student.train()

    def uses_paths(self) -> bool:
        """Prompted rows start on the teacher's sampling paths (and there are prompts to make such rows)."""
        config = self.config
        return config.prompted_states == "teacher-paths" and self.prompts.shape[0] > 0 and config.empty_prompt_share < 1.0

    @_no_grad
    def _teacher_paths(self, vae: Any, device: Any) -> dict[str, torch.Tensor]:
        """``--num-teacher-paths`` DDIM sampling paths of the teacher (Eq. A), path j for prompt ``j mod P`` (in a
        seeded order) and weights drawn from the ranges: every state ``x_t`` before each of the
        ``--teacher-path-steps`` steps, as float16 on the CPU. Seeded by ``--seed``, so a resumed run draws the same."""
        import torch
        from diffusers import DDIMScheduler

        from .student import teacher_prediction

        config, n = self.config, self.config.num_teacher_paths
        sched = DDIMScheduler.from_config(self.noise_scheduler.config)
        sched.set_timesteps(config.teacher_path_steps)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        shape = (self.prior.config.in_channels, config.resolution // factor, config.resolution // factor)
        g = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(self.prompts.shape[0], generator=g)
        prompt = order[torch.arange(n) % len(order)]
        (lo_d, hi_d), (lo_c, hi_c) = config.domain_guidance_scale_range, config.guidance_scale_range
        w_d, w_c = lo_d + (hi_d - lo_d) * torch.rand(n, generator=g), lo_c + (hi_c - lo_c) * torch.rand(n, generator=g)
        noise = torch.randn((n, *shape), generator=g)
        states = torch.empty((n, len(sched.timesteps), *shape), dtype=torch.float16)
        for i in progress(range(0, n, 16), desc="teacher paths", unit="batch"):
            j = slice(i, min(i + 16, n))
            x, text = noise[j].to(device), self.prompts[prompt[j].to(device)]
            null = self.null.expand(x.shape[0], *self.null.shape[1:])
            for k, t in enumerate(sched.timesteps):
                states[j, k] = x.half().cpu()
                eps = teacher_prediction(self.prior, self.domain, x, t.expand(x.shape[0]).to(device), text, null,
                                         w_d[j].to(device), w_c[j].to(device))
                x = sched.step(eps, t, x).prev_sample
        return {"states": states, "timesteps": sched.timesteps.clone(), "prompt": prompt, "w_d": w_d, "w_c": w_c}

    def param_groups(self, model: torch.nn.Module, params: list) -> list[dict[str, Any]]:
        """The UNet's weights at --learning-rate, the new weight embedding at its own (larger) rate."""
        embedding = {id(p) for p in model.class_embedding.parameters()}
        return [{"params": [p for p in params if id(p) not in embedding]},
                {"params": [p for p in params if id(p) in embedding], "lr": self.config.embedding_learning_rate}]

    def loss(self, model: Any, latents: torch.Tensor, noise: torch.Tensor, gens: list[torch.Generator],
             batches: LatentBatches) -> torch.Tensor:
        import torch

        from .student import call_student, teacher_prediction, weight_rows

        config, b, device = self.config, latents.shape[0], latents.device
        if config.objective == "consistency":  # t on the teacher's DDIM schedule: (n + 1) k - 1, as LCM's
            k = self.noise_scheduler.config.num_train_timesteps // config.num_ddim_timesteps
            t = ((per_sample(gens, lambda m, g: torch.randint(0, config.num_ddim_timesteps, (m,), generator=g)) + 1) * k
                 - 1).to(device)
            noisy = self.noise_scheduler.add_noise(latents, noise, t)
        else:
            noisy, t, _ = noise_and_target(self.family, self.noise_scheduler, latents, noise, gens)
        # each row's prompt: the empty one with probability --empty-prompt-share, else one of the file's, uniformly
        n = self.prompts.shape[0]
        empty = per_sample(gens, lambda m, g: torch.rand(m, generator=g)) < (config.empty_prompt_share if n else 1.0)
        pick = per_sample(gens, lambda m, g: torch.randint(0, max(n, 1), (m,), generator=g))
        null = self.null.expand(b, *self.null.shape[1:])
        text = torch.where(empty.view(-1, 1, 1).to(device), null, self.prompts[pick.to(device)] if n else null)
        (lo_d, hi_d), (lo_c, hi_c) = config.domain_guidance_scale_range, config.guidance_scale_range
        w_d = (lo_d + (hi_d - lo_d) * per_sample(gens, lambda m, g: torch.rand(m, generator=g))).to(device)
        w_c = (lo_c + (hi_c - lo_c) * per_sample(gens, lambda m, g: torch.rand(m, generator=g))).to(device)
        if self.paths is not None:  # a prompted row: a state on a teacher path, with that path's prompt and weights
            paths = self.paths
            j = per_sample(gens, lambda m, g: torch.randint(0, paths["states"].shape[0], (m,), generator=g))
            k = per_sample(gens, lambda m, g: torch.randint(0, paths["states"].shape[1], (m,), generator=g))
            on_path, e = ~empty.to(device), (~empty).view(-1, *[1] * (noisy.ndim - 1)).to(device)
            noisy = torch.where(e, paths["states"][j, k].to(device, noisy.dtype), noisy)
            t = torch.where(on_path, paths["timesteps"][k].to(device), t)
            text = torch.where(e.view(-1, 1, 1), self.prompts[paths["prompt"][j].to(device)], text)
            w_d = torch.where(on_path, paths["w_d"][j].to(device), w_d)
            w_c = torch.where(on_path, paths["w_c"][j].to(device), w_c)
        with torch.no_grad():
            target = teacher_prediction(self.prior, self.domain, noisy, t, text, null, w_d, w_c)
        if config.empty_prompt_label == "zero":  # the target ignores an empty row's w_c; its label says "no prompt"
            w_c = torch.where(empty.to(device), torch.zeros_like(w_c), w_c)
        labels = weight_rows(w_d, w_c, b, noisy)
        if config.objective == "consistency":
            return self._consistency_loss(model, noisy, t, target, text, labels, k)
        pred = call_student(model, noisy, t, text, labels)
        return denoising_loss(pred, target, None, None, self.prediction_type)

    def _consistency_loss(self, model: Any, x_t: torch.Tensor, t: torch.Tensor, eps_teacher: torch.Tensor,
                          text: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
        """LCM (Luo et al. 2023): the teacher's guided DDIM step from t to s = t − k, then the student's consistency
        function ``f(x, t) = c_skip(t) x + c_out(t) x0(x, t)`` (LCMScheduler's scalings) at ``x_t`` against its own
        value at ``x_s`` under stop-gradient (target decay 0, as improved consistency training), MSE."""
        import torch

        from .student import call_student

        alphas = self.noise_scheduler.alphas_cumprod.to(x_t.device)
        s = (t - k).clamp(min=0)

        def scales(tt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return alphas[tt].sqrt().view(-1, 1, 1, 1), (1 - alphas[tt]).sqrt().view(-1, 1, 1, 1)

        (a_t, sig_t), (a_s, sig_s) = scales(t), scales(s)
        x_s = a_s * (x_t - sig_t * eps_teacher) / a_t + sig_s * eps_teacher  # DDIM with the teacher's guided eps

        def f(x: torch.Tensor, tt: torch.Tensor, a: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
            eps = call_student(model, x, tt, text, labels)
            c_skip, c_out = self.lcm.get_scalings_for_boundary_condition_discrete(tt.float())
            return c_skip.view(-1, 1, 1, 1) * x + c_out.view(-1, 1, 1, 1) * (x - sig * eps) / a

        pred = f(x_t, t, a_t, sig_t)
        with torch.no_grad():
            target = f(x_s, s, a_s, sig_s)
        return denoising_loss(pred, target, None, None, "epsilon")

    def settings(self) -> Any:
        from .student import StudentSettings

        config = self.config
        return StudentSettings(
            domain_guidance_scale_range=tuple(config.domain_guidance_scale_range),
            guidance_scale_range=tuple(config.guidance_scale_range),
            embedding=self.embedding.config(), lora=self.lora, objective=config.objective,
            original_inference_steps=config.num_ddim_timesteps if config.objective == "consistency" else None,
            empty_prompt_label=config.empty_prompt_label,
            teacher={"prior": config.prior, "domain": config.domain, "prompts": config.prompts,
                     "num_prompts": int(self.prompts.shape[0]), "empty_prompt_share": config.empty_prompt_share,
                     "prompted_states": "teacher-paths" if self.paths is not None else "domain-images"},
        )

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        from .student import save_student

        save_student(model, folder, self.settings())

    @_no_grad
    def validate(self, model: torch.nn.Module, step: int, device: Any) -> list:
        from .pipeline import InDomainPipeline
        from .student import use_student

        pipe = InDomainPipeline.from_pretrained(self.config.prior, allow_pickle=self.config.allow_pickle)
        use_student(pipe, model, self.settings())  # the model being trained (LoRA layers included), not a copy
        return validation_grids(pipe.to(device), self.config, step)

    def finish(self, out: Path, num_images: int, steps: int) -> None:
        config = self.config
        atomic_write_text(out / "README.md", f"""# Distilled in-domain student

The prior `{config.prior}` with the domain model `{config.domain}` under Eq. A (decoupled guidance), distilled by
`indomain distill` into one UNet call per step ({'LoRA rank ' + str(config.lora_rank) if config.lora_rank else 'all weights'};
{num_images} domain images, {steps} optimizer steps). Trained weight ranges: w_d in {config.domain_guidance_scale_range},
w_c in {config.guidance_scale_range}. Every setting is in `train_config.json` and `student_config.json`.

```python
from indomain import InDomainPipeline

pipe = InDomainPipeline.from_pretrained("{config.prior}", distilled="{config.output}")
images = pipe("a prompt", domain_guidance_scale=2.5, guidance_scale=2.5).images
```
""")


def distill(config: DistillConfig, on_step: Callable[[int], None] | None = None) -> Path:
    """Run a distillation; returns the output folder (a student folder, `indomain.student`)."""
    return train(config, on_step, DistillObjective(config))


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("distill", help=help, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, DistillConfig, OPTIONS)
    add_options(p, DryRun)
    p.set_defaults(func=cmd_distill)




def cmd_distill(args: argparse.Namespace) -> int:
    config = from_args(DistillConfig, args)
    if from_args(DryRun, args).dry_run:
        print(to_json(dataclasses.asdict(config), indent=2))
        return 0
    out = distill(config)
    print(f"saved the distilled student to {out}")
    return 0
