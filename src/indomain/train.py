"""`indomain train`: learn a domain from a folder of unlabeled images.

    indomain train --prior PRIOR --images DIR --output OUT                  # null-text domain model (the paper)
    indomain train ... --lora-rank 8                                        # LoRA domain model (small files)
    indomain train ... --baseline --caption "a photo of <domain>"           # conventional fine-tune, for comparisons
    accelerate launch --multi_gpu --num_processes 8 -m indomain.cli train ...   # multi-GPU, no code change

The run happens in this order (as diffusers' ``train_text_to_image.py``): build the accelerator; build
the model from the prior (the text encoders run once, for the empty prompt or the fixed caption, and are
freed); encode every image once with the VAE into the sharded latent cache (`indomain.latent_cache`: every
process encodes its share, a kill loses at most a shard), or, with ``--no-latent-cache``, encode each batch on
the fly; then one loop: sample a batch of latents, noise them (`noise_and_target`), predict with the model, plain
denoising loss (optionally min-SNR weighted), backward, clip, step, EMA. Checkpoints are written atomically every
``--checkpointing-steps`` (through ``accelerator.save_state`` under DeepSpeed / FSDP); ``--resume latest``
continues exactly (step, optimizer, EMA, RNG and data order: batches, noise and timesteps are pure functions of
``(seed, step, rank)``, drawn per sample, so a global batch is the same on any number of processes).

Every family of `indomain.families` trains in this one loop: SD 1.x/2.x (target epsilon or v, as the prior's
scheduler says), SDXL (the same, with each image's size conditioning as time ids: original size from the cache,
crop, target size) and SD3 (flow matching: logit-normal timesteps, target the velocity noise − x0).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import importlib.util
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, TYPE_CHECKING


from .cliargs import DryRun, add_options, finite_float, from_args, nonnegative_int, option, positive_float, positive_int
from .console import info
from .console import progress as tqdm  # tqdm.auto, hidden by `indomain --quiet`
from .data import ImageFolderDataset
from .numerics import NonFiniteError
from .outputs import (atomic_path, atomic_write_text, check_paths_apart, claim_output_dir, close_run, record_outputs,
                      run_foreign_entries, to_json, truncate_log)

if TYPE_CHECKING:
    import torch

    from .checkpoint import Checkpoint
    from .latent_cache import ShardedLatents

# torch, safetensors and the checkpoint module are imported where they are used, so that `indomain train --help`
# (which builds its options from TrainConfig) starts without them.

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


# diffusers.optimization.SchedulerType's names, written here so `train --help` loads no diffusers (a test compares)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "piecewise_constant")


FULL_WEIGHTS_LR = 1e-5  # the paper's rate for all weights
LORA_LR_FACTOR = 10  # a low-rank update needs larger steps: 1e-4, the usual LoRA rate


def learning_rate_for(lora: bool, full_weights_rate: float = FULL_WEIGHTS_LR) -> float:
    """The one learning-rate rule: ``full_weights_rate`` for all weights, ``LORA_LR_FACTOR`` times it for adapters."""
    return full_weights_rate * LORA_LR_FACTOR if lora else full_weights_rate


@dataclass
class TrainConfig:
    """Every setting of a run. Saved as ``train_config.json`` next to the model and in each checkpoint.

    Each field is also an option of ``indomain train`` (``--field-name`` unless ``flag`` says otherwise).
    """

    # the command's one line in `indomain --help` (cli.COMMANDS derives it from here)
    command_help: ClassVar[str] = ("train a domain model (or a conventional fine-tune baseline) on a folder of "
                                   "unlabeled images")

    prior: str = option(help="prior pipeline folder or hub id: Stable Diffusion 1.x/2.x, SDXL or SD3 (diffusers layout), "
                        "or a single-file .safetensors checkpoint (with --prior-config)")
    images: str = option(help="folder of domain images (PNG/JPEG/WebP/BMP, read recursively, no captions); or give "
                         "--dataset-name / --dataset-dir instead")
    output: str = option(help="output folder for the model, checkpoints, samples and logs")
    prior_config: str | None = option(None, "for a single-file --prior: a diffusers folder of the same model (its "
                                      "configs, tokenizers and scheduler; its weights are not read)")
    resolution: int = option(512, "training resolution in pixels (shorter side resized, then cropped)", type=positive_int)
    center_crop: bool = option(True, "center crops; --random-crop takes random ones (in latent space, on the cached latents)",
                               flag="--random-crop")
    random_flip: bool = option(True, "random horizontal flips (the cache stores both flips); --no-flip turns them off",
                               flag="--no-flip")
    train_batch_size: int = option(16, "batch size per device", type=positive_int)
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step", type=positive_int)
    max_train_steps: int | None = option(None, "optimizer steps (default: from --num-train-epochs when given, else "
                                         "10000); wins over --num-train-epochs", type=positive_int)
    num_train_epochs: int | None = option(None, "passes over the images; sets the steps when --max-train-steps is not "
                                          "given: ceil(images / (batch x accumulation x processes)) per epoch",
                                          type=positive_int)
    learning_rate: float | None = option(None, "AdamW learning rate (default: 1e-5 for all weights, the paper's "
                                         "value; 1e-4 with --lora-rank)", type=positive_float)
    lr_scheduler: str = option("constant", "LR schedule: any diffusers.optimization.get_scheduler name")
    lr_warmup_steps: int = option(0, "LR warm-up steps", type=nonnegative_int)
    adam_beta1: float = option(0.9, "AdamW beta1, in [0, 1)", type=finite_float)
    adam_beta2: float = option(0.999, "AdamW beta2, in [0, 1)", type=finite_float)
    adam_weight_decay: float = option(1e-2, "AdamW weight decay", type=finite_float)
    adam_epsilon: float = option(1e-8, "AdamW epsilon", type=positive_float)
    use_8bit_adam: bool = option(False, "bitsandbytes AdamW8bit, as the official run (needs bitsandbytes and a CUDA GPU)")
    max_grad_norm: float = option(1.0, "gradient clipping norm", type=positive_float)
    use_ema: bool = option(True, "keep an EMA of the weights, as the paper; --no-ema turns it off", flag="--no-ema")
    ema_decay: float = option(0.9999, "EMA decay", type=finite_float)
    snr_gamma: float | None = option(None, "min-SNR-gamma loss weighting, e.g. 5.0 (default: plain MSE)", type=positive_float)
    lora_rank: int | None = option(None, "train LoRA adapters of this rank (peft) instead of all weights (default: all "
                                   "weights)", type=positive_int)
    lora_alpha: float | None = option(None, "LoRA alpha (default: the rank)", type=positive_float)
    baseline: bool = option(False, "conventional fine-tune of the text-conditioned prior UNet with a fixed --caption "
                            "(for comparisons)")
    caption: str = option("", "the baseline's fixed caption, e.g. 'a photo of <domain>' (default: empty)")
    mode: str = option("auto", "null-text mode: constant (the paper's, for UNet priors), exact (the prior fed the "
                               "empty prompt; the only mode for SD3), auto (constant, or exact for SD3)",
                       choices=["auto", "constant", "exact"])
    mixed_precision: str = option("no", "accelerate mixed precision", choices=["no", "fp16", "bf16"])
    gradient_checkpointing: bool = option(False, "gradient checkpointing: trade compute for memory")
    channels_last: bool = option(False, "hold the model's weights channels_last, the convolution layout GPU tensor cores "
                                 "prefer (the same results to float tolerance)")
    compile: str = option("no", "torch.compile the model in place (nn.Module.compile): inductor for speed on a GPU, "
                          "after a compile of a minute or more; eager / aot_eager only check that it traces",
                          choices=["no", "inductor", "eager", "aot_eager", "cudagraphs"])
    checkpointing_steps: int = option(500, "save a resumable checkpoint every N steps", type=positive_int)
    checkpoints_total_limit: int | None = option(None, "keep only the newest N checkpoints (default: all)", type=positive_int)
    resume: str | None = option(None, "'latest' or a checkpoint folder to continue from (default: start afresh)")
    overwrite: bool = option(False, "replace an existing run in --output")
    validation_steps: int = option(0, "write sample grids every N steps (default: 0, never)", type=nonnegative_int)
    validation_prompts: list[str] = option([], "prompts for text-controlled validation grids (default: unconditional "
                                           "grids only)", nargs="*")
    num_validation_images: int = option(4, "images per validation grid", type=positive_int)
    validation_inference_steps: int = option(25, "sampler steps of the validation grids", type=positive_int)
    domain_guidance_scale: float = option(2.5, "domain weight w_d of the validation grids", type=finite_float)
    guidance_scale: float = option(2.5, "control weight w_c of the prompted validation grids", type=finite_float)
    min_size_policy: str = option("warn-skip", "images far smaller than the resolution (see indomain.data)",
                                  choices=["warn-skip", "error", "allow"])
    latent_cache: str | None = option(None, "folder of the VAE latent cache, shareable between runs on the same images "
                                      "(default: <output>/latent_cache)")
    cache_latents: bool = option(True, "encode every image once into the sharded latent cache; --no-latent-cache "
                                 "encodes each batch on the fly instead (for datasets too big to cache)",
                                 flag="--no-latent-cache")
    cache_batch_size: int = option(8, "images per VAE call while encoding (each with its mirror image)", type=positive_int)
    cache_shard_size: int = option(512, "images per latent-cache shard: the most a kill can lose, and the cache's "
                                   "peak memory", type=positive_int)
    aspect_buckets: str = option("auto", "aspect-ratio buckets: each image is resized and cropped to the bucket (sides "
                                 "a multiple of the model's step, area at most resolution², ratio 1:2 to 2:1) nearest "
                                 "its aspect ratio, and each batch comes from one bucket; SDXL's size conditioning gets "
                                 "the image's original size, crop and bucket. auto: on for SDXL and SD3",
                                 choices=["auto", "on", "off"])
    dataloader_num_workers: int = option(0, "worker processes that read and resize images (cache building and "
                                         "--no-latent-cache); 0 reads them in the main process", type=nonnegative_int)
    ddp_timeout: int = option(1800, "seconds a process waits for the others (torch.distributed process-group "
                              "timeout, set through accelerate's InitProcessGroupKwargs)", type=positive_int)
    dataset_name: str | None = option(None, "a Hugging Face `datasets` dataset instead of --images: a hub id or a builder "
                                      "(imagefolder, parquet, ...); needs pip install 'indomain[datasets]'")
    dataset_dir: str | None = option(None, "a local folder for the `datasets` library (parquet / arrow / image files; "
                                     "alone, the builder is inferred) instead of --images")
    dataset_split: str = option("train", "the split of --dataset-name / --dataset-dir")
    image_column: str | None = option(None, "the image column of the dataset (default: its only Image column)")
    seed: int = option(0, "seed of everything random")
    allow_pickle: bool = option(False, "allow pickle checkpoints for the prior (weights_only loading); only for files "
                                "you trust")
    log_every: int = option(10, "append a line to train_log.jsonl every N steps", type=positive_int)
    report_to: str = option("none", "also log to an experiment tracker through accelerate (train_log.jsonl is always "
                            "written): tensorboard (pip install tensorboard; logs in <output>/logs) or wandb",
                            choices=["none", "tensorboard", "wandb"])
    push_to_hub: bool = option(False, "upload the finished model (weights, README.md model card, samples, "
                               "train_config.json) to the Hugging Face Hub as --hub-model-id; checkpoints and the "
                               "latent cache stay local")
    hub_model_id: str | None = option(None, "the Hub repository for --push-to-hub, e.g. 'me/faces-domain' (default: "
                                      "the --output folder's name)")

    def __post_init__(self) -> None:
        # The one learning-rate rule, resolved here so train_config.json records the value used: the paper's 1e-5
        # for all weights, the usual 1e-4 for LoRA adapters (a low-rank update needs larger steps).
        if self.learning_rate is None:
            self.learning_rate = learning_rate_for(lora=bool(self.lora_rank))
        # diffusers' convention: --max-train-steps wins; epochs decide only when it is not given (`resolve_steps`)
        if self.max_train_steps is None and self.num_train_epochs is None:
            self.max_train_steps = 10_000

    def resolve_steps(self, num_images: int, world: int) -> int:
        """``max_train_steps``, derived from ``num_train_epochs`` when not given (and recorded in the config)."""
        if self.max_train_steps is None:
            per_epoch = math.ceil(num_images / (self.train_batch_size * self.gradient_accumulation_steps * world))
            self.max_train_steps = self.num_train_epochs * per_epoch
        return self.max_train_steps

    def validate(self) -> None:
        """Refuse settings that would crash later or silently train nothing; errors name the CLI flag."""
        def flag(name: str) -> str:
            return "--" + name.replace("_", "-")

        for name in ("resolution", "train_batch_size", "gradient_accumulation_steps", "max_train_steps",
                     "num_train_epochs", "checkpointing_steps", "num_validation_images", "validation_inference_steps",
                     "log_every", "cache_batch_size", "cache_shard_size", "ddp_timeout"):
            value = getattr(self, name)
            if value is None and name in ("max_train_steps", "num_train_epochs"):
                continue
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{flag(name)} must be a whole number >= 1, got {value!r}")
        if not isinstance(self.dataloader_num_workers, int) or self.dataloader_num_workers < 0:
            raise ValueError(f"--dataloader-num-workers must be a whole number >= 0, got {self.dataloader_num_workers!r}")
        uses_dataset = self.dataset_name is not None or self.dataset_dir is not None
        if uses_dataset and self.images:
            raise ValueError("--images and --dataset-name / --dataset-dir are two sources of images; give one")
        if not uses_dataset and not self.images:
            raise ValueError("give --images (a folder), or --dataset-name / --dataset-dir (the datasets library)")
        if not self.cache_latents and self.latent_cache is not None:
            raise ValueError("--latent-cache names the cache folder, but --no-latent-cache builds no cache; pass one")
        for name in ("lr_warmup_steps", "validation_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{flag(name)} must be >= 0, got {getattr(self, name)!r}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(f"--checkpoints-total-limit must be >= 1, got {self.checkpoints_total_limit}")
        for name in ("learning_rate", "max_grad_norm", "adam_epsilon"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{flag(name)} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.adam_weight_decay) and self.adam_weight_decay >= 0):
            raise ValueError(f"--adam-weight-decay must be a finite number >= 0, got {self.adam_weight_decay!r}")
        for name in ("adam_beta1", "adam_beta2", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be in [0, 1), got {getattr(self, name)!r}")
        if self.snr_gamma is not None and not (math.isfinite(self.snr_gamma) and self.snr_gamma > 0):
            raise ValueError(f"--snr-gamma must be a finite number > 0, got {self.snr_gamma!r}")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"--lora-rank must be >= 1, got {self.lora_rank}")
        if self.mode not in ("auto", "constant", "exact"):
            raise ValueError(f"--mode must be 'auto', 'constant' or 'exact', got {self.mode!r}")
        if self.baseline and self.mode not in ("auto", "constant"):
            raise ValueError("--mode applies to the null-text domain model, not to --baseline")
        if self.aspect_buckets not in ("auto", "on", "off"):
            raise ValueError(f"--aspect-buckets must be auto, on or off, got {self.aspect_buckets!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.report_to not in ("none", "tensorboard", "wandb"):
            raise ValueError(f"--report-to must be none, tensorboard or wandb, got {self.report_to!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"--lr-scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}")
        if self.latent_cache is not None and os.path.exists(self.latent_cache) and not os.path.isdir(self.latent_cache):
            raise ValueError(f"--latent-cache {self.latent_cache!r} is a file; it names a folder for the cache")
        if self.hub_model_id is not None and not self.push_to_hub:
            raise ValueError("--hub-model-id names the repository of --push-to-hub; pass --push-to-hub too")
        if self.report_to != "none" and importlib.util.find_spec(self.report_to) is None:
            raise ValueError(f"--report-to {self.report_to} needs the {self.report_to} package: pip install {self.report_to}")


def _no_grad(fn: Callable) -> Callable:
    """``torch.no_grad()`` as a decorator that imports torch only when the function runs."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return run


def list_checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (`indomain.checkpoint.list_checkpoints`)."""
    from .checkpoint import list_checkpoints as complete

    return complete(output)


# ----------------------------------------------------------------------------------------------------
# Latent cache


def sample_generator(seed: int, k: int) -> torch.Generator:
    """The generator of sample ``k`` of the run's sample stream: its flip, crop, posterior draw, noise and timestep.

    Per sample, not per batch or per process, so a global batch is the same whether one process or eight share it
    (and a resumed run draws what the uninterrupted one drew)."""
    import torch

    return torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + k) % 2**63)


def _latent_fingerprint(vae: Any, vae_id: str) -> str:
    from .latent_cache import vae_fingerprint

    return vae_fingerprint(vae, vae_id)


def build_latent_cache(paths: list[Path], vae: Any, config: TrainConfig, cache_dir: Path, vae_id: str, device: Any,
                       rank: int = 0, world: int = 1, barrier: Callable[[], None] | None = None,
                       on_shard: Callable[[Path], None] | None = None,
                       buckets: list[tuple[int, int]] | None = None) -> ShardedLatents:
    """Encode the images into the sharded cache in ``cache_dir`` (see `indomain.latent_cache`); returns its reader.

    Every process calls it: the shards that are missing or stale are dealt round-robin over the ``world``
    processes, each encodes its own in batches of ``--cache-batch-size``, and ``barrier`` (all processes) separates
    the scan from the writing and the writing from the reading. A complete cache with this key is reused as it is.
    """
    from .latent_cache import ShardedLatents, build_shards, cache_key, missing_shards, remove_leftovers, split_round_robin

    wait = barrier or (lambda: None)
    key = cache_key(paths, config.resolution, config.random_flip, config.cache_shard_size,
                    _latent_fingerprint(vae, vae_id), buckets)
    if rank == 0:
        remove_leftovers(cache_dir)  # temporary files of shards a kill interrupted
    wait()
    todo = missing_shards(cache_dir, key, len(paths), config.cache_shard_size)  # every process sees the same list
    wait()
    if todo:
        cache_dir.mkdir(parents=True, exist_ok=True)
        build_shards(paths, vae, cache_dir, key, resolution=config.resolution, flip=config.random_flip,
                     shard_size=config.cache_shard_size, batch_size=config.cache_batch_size,
                     todo=split_round_robin(todo, rank, world), device=device,
                     num_workers=config.dataloader_num_workers, rank=rank, show_progress=rank == 0, on_shard=on_shard,
                     buckets=buckets)
        wait()
        left = missing_shards(cache_dir, key, len(paths), config.cache_shard_size)
        if left:
            raise OSError(f"latent cache {cache_dir}: shard(s) {left[:5]} are still missing after encoding; another "
                          "run may be writing the same --latent-cache folder with other settings")
    return ShardedLatents(cache_dir, key, len(paths), config.cache_shard_size)


class EncodedBatch:
    """The posteriors of one batch, encoded on the fly (``--no-latent-cache``): the same reads as `ShardedLatents`."""

    def __init__(self, items: list[dict], params: list[torch.Tensor]) -> None:
        self._params = {(it["index"], it["flip"]): p for it, p in zip(items, params)}
        self._sizes = {it["index"]: list(it["size"]) for it in items}
        self._crops = {it["index"]: list(it["crop"]) for it in items if "crop" in it}

    def params(self, i: int, flip: bool) -> torch.Tensor:
        return self._params[(i, flip)]

    def size(self, i: int) -> list[int]:
        return self._sizes[i]

    def crop(self, i: int) -> list[int]:
        return self._crops[i]


class LatentBatches:
    """Batches of latents whose content is a pure function of ``(seed, step, rank)``.

    The sample stream is the concatenation of per-epoch permutations of the images; optimizer step
    ``s`` with micro-step ``m`` reads a contiguous chunk of it and rank ``r`` takes its slice, so the
    data order survives a resume and shards across processes without a sampler. Sample ``k`` of the stream
    draws everything random from its own generator (`sample_generator`).

    With aspect buckets (``bucket_of``: each image's bucket), each epoch instead shuffles the images of every bucket,
    cuts each bucket into global micro-batches (``batch x processes``; the last one filled from the bucket's start),
    and shuffles those; micro-step ``g`` takes batch ``g`` of the stream, rank ``r`` its slice. Sample indices ``k``
    still number the global stream, so the batches stay the same on any number of processes.
    """

    def __init__(self, source: Any, n: int, config: TrainConfig, latent_size: int, scaling_factor: float,
                 shift_factor: float | None = None, vae_factor: int = 8, bucket_of: list[int] | None = None) -> None:
        self.source = source  # ShardedLatents, or None when each call passes its EncodedBatch
        self.n, self.config, self.size, self.scale = n, config, latent_size, scaling_factor
        self.shift, self.factor = shift_factor, vae_factor
        self.time_ids: torch.Tensor | None = None  # SDXL's (original size, crop, target size) of the last batch
        self._perm: tuple[int, Any] | None = None
        self.bucket_of = bucket_of
        self._groups: tuple[tuple[int, int], list[list[int]]] | None = None

    def _index(self, k: int) -> int:
        import torch

        epoch, pos = divmod(k, self.n)
        if self._perm is None or self._perm[0] != epoch:  # one permutation per epoch, kept while it is in use
            gen = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=gen).tolist())
        return self._perm[1][pos]

    def _bucket_groups(self, epoch: int, size: int) -> list[list[int]]:
        """Epoch ``epoch``'s global micro-batches of ``size`` images, each from one bucket (see the class)."""
        import torch

        if self._groups is not None and self._groups[0] == (epoch, size):
            return self._groups[1]
        members: dict[int, list[int]] = {}
        for i, bucket in enumerate(self.bucket_of or []):
            members.setdefault(bucket, []).append(i)
        groups = []
        for bucket in sorted(members):
            gen = torch.Generator().manual_seed((self.config.seed * 100_003 + epoch) * 1_009 + bucket)
            order = [members[bucket][j] for j in torch.randperm(len(members[bucket]), generator=gen).tolist()]
            for a in range(0, len(order), size):
                groups.append([order[(a + t) % len(order)] for t in range(size)])
        gen = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        groups = [groups[j] for j in torch.randperm(len(groups), generator=gen).tolist()]
        self._groups = ((epoch, size), groups)
        return groups

    def plan(self, step: int, micro: int, rank: int, world: int) -> list[tuple[int, int, bool]]:
        """``(k, image index, flip)`` of each sample this rank trains on at ``(step, micro)``."""
        import torch

        b = self.config.train_batch_size
        g = step * self.config.gradient_accumulation_steps + micro
        start = (g * world + rank) * b
        group = None
        if self.bucket_of is not None:
            per_epoch = len(self._bucket_groups(0, b * world))  # the same count every epoch
            epoch, pos = divmod(g, per_epoch)
            group = self._bucket_groups(epoch, b * world)[pos][rank * b : (rank + 1) * b]
        out = []
        for j, k in enumerate(range(start, start + b)):
            gen = sample_generator(self.config.seed, k)
            flip = self.config.random_flip and bool(torch.rand(1, generator=gen) < 0.5)
            out.append((k, self._index(k) if group is None else group[j], flip))
        return out

    def get(self, step: int, micro: int, rank: int, world: int,
            source: Any = None) -> tuple[torch.Tensor, list[torch.Generator]]:
        """The scaled latents of this rank's micro-batch, and each sample's generator (for its noise and timestep)."""
        import torch

        source = source if source is not None else self.source
        out, ids, gens = [], [], []
        for k, i, flip in self.plan(step, micro, rank, world):
            gen = sample_generator(self.config.seed, k)
            if self.config.random_flip:
                torch.rand(1, generator=gen)  # the flip, drawn again so the stream stays the one `plan` read
            params = source.params(i, flip)  # (2C, h, w)
            h, w = params.shape[-2:]
            if self.bucket_of is not None:  # the latent is its bucket's size already; the crop was in pixels
                (top, left), crop = (0, 0), source.crop(i)
            elif self.config.center_crop:
                top, left = (h - self.size) // 2, (w - self.size) // 2
            else:
                top = int(torch.randint(0, h - self.size + 1, (1,), generator=gen))
                left = int(torch.randint(0, w - self.size + 1, (1,), generator=gen))
            if self.bucket_of is None:
                params = params[:, top : top + self.size, left : left + self.size]
                crop = [top * self.factor, left * self.factor]
            mean, logvar = params.chunk(2, 0)
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            z = mean + std * torch.randn(mean.shape, generator=gen)  # a posterior sample, as VAE.encode().sample()
            out.append(z * self.scale if self.shift is None else (z - self.shift) * self.scale)  # SD3's VAE is shifted
            th, tw = (h * self.factor, w * self.factor) if self.bucket_of is not None else (self.size * self.factor,) * 2
            ids.append([*source.size(i), *crop, th, tw])
            gens.append(gen)
        self.time_ids = torch.tensor(ids, dtype=torch.float32)
        return torch.stack(out), gens


class PlannedBatches:
    """The DataLoader batch sampler of ``--no-latent-cache``: this rank's ``(image, flip)`` keys for every
    micro-step from ``first_step`` on, in the order the loop trains on them (`LatentBatches.plan`)."""

    def __init__(self, batches: LatentBatches, first_step: int, last_step: int, rank: int, world: int) -> None:
        self.batches, self.first, self.last, self.rank, self.world = batches, first_step, last_step, rank, world

    def __len__(self) -> int:
        return (self.last - self.first) * self.batches.config.gradient_accumulation_steps

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for step in range(self.first, self.last):
            for micro in range(self.batches.config.gradient_accumulation_steps):
                yield [(i, flip) for _, i, flip in self.batches.plan(step, micro, self.rank, self.world)]


# ----------------------------------------------------------------------------------------------------
# Model


def build_model(config: TrainConfig, parts: dict) -> tuple[torch.nn.Module, Any]:
    """The trainable model and the text condition of its calls: None for a null-text model, the fixed caption's for
    the baseline (a tensor, or SDXL / SD3's ``{"text", "pooled"}``; `families.denoiser_inputs` makes the inputs).

    The text encoders run once here (the prior's empty prompt for the null-text conversion, or the baseline's
    caption), through the family's own pipeline code, and are dropped from ``parts`` afterwards, so training never
    holds them.
    """
    import torch

    from .autopipeline import pipeline_class
    from .nulltext import NullTextTransformer, NullTextUNet

    family = parts["family"]
    text_parts = {k: parts.pop(k) for k in list(parts) if k.startswith(("text_encoder", "tokenizer"))}
    denoiser = parts[family.denoiser]
    pipe = pipeline_class(family)(vae=parts["vae"], scheduler=parts["noise_scheduler"], **{family.denoiser: denoiser},
                                  **text_parts, **({"force_zeros_for_empty_prompt": parts["model_index"].get(
                                      "force_zeros_for_empty_prompt", True)} if family.name == "sdxl" else {}))
    with torch.no_grad():
        if config.baseline:
            model, text = denoiser, pipe.encode_text([config.caption], denoiser.device)
        else:
            null = pipe.encode_negative(None, 1, denoiser.device)
            text = None
            if family.denoiser == "transformer":
                if config.mode == "constant":
                    raise ValueError(f"--mode constant is for UNet priors; a {family.title} domain model has only "
                                     "mode exact (see NullTextTransformer)")
                model = NullTextTransformer.from_prior(denoiser, null["text"], null["pooled"], prior=str(config.prior))
            else:
                model = NullTextUNet.from_prior(
                    denoiser,
                    null if isinstance(null, torch.Tensor) else null["text"],
                    null_pooled=None if isinstance(null, torch.Tensor) else null["pooled"],
                    mode="constant" if config.mode == "auto" else config.mode,
                    prediction_type=parts["noise_scheduler"].config.prediction_type,
                    prior=str(config.prior),
                    scheduler=parts["noise_scheduler"],
                    seed=config.seed,
                )
    del pipe, text_parts
    if config.lora_rank:
        add_lora(model.unet if hasattr(model, "unet") and not config.baseline else model, config)
    model.train()
    return model, text


def add_lora(target: torch.nn.Module, config: TrainConfig) -> dict[str, Any]:
    """Freeze ``target`` and add trainable LoRA adapters of ``config.lora_rank`` (peft, on `LORA_TARGETS`); returns
    the adapter settings."""
    import torch
    from peft import LoraConfig

    settings = {"r": config.lora_rank, "lora_alpha": config.lora_alpha or config.lora_rank, "target_modules": LORA_TARGETS}
    target.requires_grad_(False)
    # peft draws the initial adapters from torch's global RNG: seed it, so a run does not depend on what ran before
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        target.add_adapter(LoraConfig(init_lora_weights="gaussian", **settings))
    return settings


def batch_text(text: Any, n: int, device: Any) -> Any:
    """A fixed text condition (a tensor, or a dict of them; None stays None) repeated for a batch of ``n``."""
    if text is None:
        return None
    if isinstance(text, dict):
        return {k: batch_text(v, n, device) for k, v in text.items()}
    return text.to(device).expand(n, *text.shape[1:])


def per_sample(gens: list[torch.Generator], fn: Callable[[int, torch.Generator], torch.Tensor]) -> torch.Tensor:
    """``fn(1, gens[i])`` for every sample, concatenated: draws that depend on the sample's own generator only."""
    import torch

    return torch.cat([fn(1, g) for g in gens])


def noise_and_target(family: Any, noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor,
                     generator: torch.Generator | list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, t, target)`` of the family's training objective. ``generator`` is one for the batch, or one per
    sample (the training loop's, so a sample's timestep does not depend on the batch it is in).

    Diffusion priors: ``t`` uniform over the training timesteps, ``x_t = add_noise(x0, noise, t)``, target noise or
    v as the prior's scheduler predicts. Flow-matching priors (SD3): ``t`` from the logit-normal density (Esser et
    al. 2024; diffusers' ``weighting_scheme="logit_normal"``, unit loss weights), ``x_t = (1 − σ) x0 + σ noise``,
    target the velocity ``noise − x0``.
    """
    import torch

    b = latents.shape[0]

    def draw(fn: Callable[[int, torch.Generator], torch.Tensor]) -> torch.Tensor:
        return fn(b, generator) if isinstance(generator, torch.Generator) else per_sample(generator, fn)

    if family.objective == "flow":
        u = torch.sigmoid(draw(lambda m, g: torch.randn(m, generator=g)))
        index = (u * noise_scheduler.config.num_train_timesteps).long().clamp(max=len(noise_scheduler.timesteps) - 1)
        sigma = noise_scheduler.sigmas[index].to(latents.device, latents.dtype).view(b, 1, 1, 1)
        t = noise_scheduler.timesteps[index].to(latents.device)
        return (1.0 - sigma) * latents + sigma * noise, t, noise - latents
    steps = noise_scheduler.config.num_train_timesteps
    t = draw(lambda m, g: torch.randint(0, steps, (m,), generator=g)).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    target = noise if noise_scheduler.config.prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, t)
    return noisy, t, target


def denoising_loss(pred: torch.Tensor, target: torch.Tensor, snr: torch.Tensor | None, snr_gamma: float | None, prediction_type: str) -> torch.Tensor:
    """Plain MSE, or min-SNR-gamma weighted MSE (Hang et al. 2023, https://arxiv.org/abs/2303.09556)."""
    import torch
    import torch.nn.functional as F

    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    weight = torch.clamp(snr, max=snr_gamma) / snr
    if prediction_type == "v_prediction":
        weight = torch.clamp(snr, max=snr_gamma) / (snr + 1)
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (loss * weight).mean()


# ----------------------------------------------------------------------------------------------------
# Checkpoints


def sharding_plugin(accelerator: Any) -> str | None:
    """``"deepspeed"`` or ``"fsdp"`` when accelerate's config shards the training state across processes (then
    checkpoints go through ``accelerator.save_state`` / ``load_state``); None for one process or plain DDP."""
    from accelerate.utils import DistributedType

    return {DistributedType.DEEPSPEED: "deepspeed", DistributedType.FSDP: "fsdp"}.get(accelerator.distributed_type)


def _save_state_dict(model: Any, state: dict, folder: Path) -> None:
    """``model/`` of a sharded run: the gathered weights by parameter name (safetensors) and the model's config."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, folder / "diffusion_pytorch_model.safetensors")


def save_checkpoint(accelerator: Any, output: Path, step: int, config: TrainConfig, model: Any, optimizer: Any,
                    lr_scheduler: Any, ema: Any, params: list, save: Callable[[Any, Path], None] | None = None) -> Path:
    """Write ``checkpoint-N`` (main process; see `indomain.checkpoint`) and prune old ones; ``save(model, dir)``
    writes its hand-loadable copy (default: `save_model`).

    Under DeepSpeed / FSDP every process first writes its part through ``accelerator.save_state`` (the checkpoint's
    ``accelerate/``), and the weights are gathered for ``model/``."""
    from .checkpoint import weights_are_finite, write_checkpoint
    from .numerics import all_finite

    final = output / f"checkpoint-{step}"
    plugin = sharding_plugin(accelerator)
    staged, state = None, None
    accelerator.wait_for_everyone()
    if plugin is not None:
        staged = output / f".accelerate-{step}.tmp"  # the same name in every process; a kill leaves only this
        if accelerator.is_main_process and staged.exists():
            shutil.rmtree(staged)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staged), safe_serialization=True)
        state = accelerator.get_state_dict(model)  # gathered from every process (a collective call)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if not (weights_are_finite(params) if state is None else all_finite(list(state.values()))):
            raise NonFiniteError(f"the weights after step {step} are not finite; {_last_good(output, step, config)}")
        unwrapped = accelerator.unwrap_model(model)
        write_checkpoint(final, step, dataclasses.asdict(config), unwrapped, None if plugin else optimizer,
                         lr_scheduler, ema, accelerator.scaler,
                         (save or (lambda m, d: save_model(m, d, config))) if state is None
                         else (lambda m, d: _save_state_dict(m, state, d)), accelerate_state=staged)
        if config.checkpoints_total_limit is not None:
            for old in list_checkpoints(output)[:-config.checkpoints_total_limit]:
                shutil.rmtree(old)
        record_outputs(output, finished=False)  # a kill after this loses nothing from the run record
    accelerator.wait_for_everyone()
    return final


def _last_good(output: Path, failed_step: int, config: TrainConfig) -> str:
    """Set aside checkpoints from the failing step on (``.diverged``); say how to resume from the last good one.

    The weights of step k produced the non-finite value, so only checkpoints before k are good (each was
    checked finite when written).
    """
    from .checkpoint import checkpoint_step

    good = []
    for ckpt in list_checkpoints(output):
        if checkpoint_step(ckpt) >= failed_step:
            ckpt.rename(ckpt.with_name(ckpt.name + ".diverged"))
        else:
            good.append(ckpt)
    lower = f"{config.learning_rate / 10:g}"
    if not good:
        return (f"no checkpoint was saved before step {failed_step}. Start again with a lower learning rate, "
                f"e.g. --learning-rate {lower} --overwrite")
    return (f"the last good checkpoint is {good[-1]}. Resume from it with a lower learning rate: "
            f"--resume {good[-1]} --learning-rate {lower}")


def resolve_resume(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from; ``latest`` with none says so and starts from scratch."""
    if config.resume is None:
        return None
    if config.resume == "latest":
        found = list_checkpoints(Path(config.output))
        if not found:
            info(f"--resume latest: no checkpoint in {config.output}; starting from scratch")
        return found[-1] if found else None
    path = Path(config.resume)
    if not (path / "train_state.json").is_file():
        raise ValueError(f"--resume {config.resume!r} is not a complete checkpoint folder (no train_state.json)")
    return path


def _clean_leftovers(out: Path) -> None:
    """Remove what a kill left behind: half-written checkpoints and final saves (never a file that is not the run's)."""
    foreign = run_foreign_entries(out)
    for p in [*out.glob("checkpoint-*.tmp"), *out.glob(".tmp-*"), *out.glob(".*.tmp")]:
        if p.name not in foreign and p.name + "/" not in foreign:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def check_inputs(config: TrainConfig) -> tuple[list[Path], list[tuple[Path, str]], Checkpoint | None]:
    """Every check that needs no model: settings, prior folder, images, resolution, resume checkpoint.

    Runs before anything is written, so a mistake never leaves a half-made output folder behind.
    """
    from diffusers import AutoencoderKL

    from .families import detect_family
    from .safeload import check_prior, check_prior_config

    config.validate()
    check_prior(config.prior, config.allow_pickle)
    check_prior_config(config.prior, config.prior_config, required=True)  # train reads the configs before loading
    folder = config.prior_config or config.prior  # the configs (a single file carries none)
    vae_config = AutoencoderKL.load_config(folder, subfolder="vae")
    factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    if config.resolution % factor:
        raise ValueError(f"--resolution must be a multiple of the VAE factor {factor}, got {config.resolution}")
    family = detect_family(config.prior, config.prior_config)
    denoiser = AutoencoderKL.load_config(folder, subfolder=family.denoiser)  # load_config only reads the JSON
    # the latents must survive the denoiser's downsampling (a UNet halves them once per block, an MMDiT patches them)
    step = 2 ** (len(denoiser["block_out_channels"]) - 1) if "block_out_channels" in denoiser else denoiser.get("patch_size", 1)
    if (config.resolution // factor) % step:
        raise ValueError(f"--resolution must be a multiple of {factor * step} for this prior (VAE factor {factor} x "
                         f"{family.denoiser} factor {step}), got {config.resolution}")
    if config.dataset_name is not None or config.dataset_dir is not None:
        from .data import load_image_dataset

        paths: Any = load_image_dataset(config.dataset_name, config.dataset_dir, config.dataset_split, config.image_column)
        skipped: list = []
    else:
        dataset = ImageFolderDataset(config.images, config.resolution, min_size_policy=config.min_size_policy)
        paths, skipped = dataset.paths, dataset.skipped
    resume_from = resolve_resume(config)
    if resume_from is None:
        return paths, skipped, None
    from .checkpoint import read_checkpoint

    ckpt = read_checkpoint(resume_from, allow_pickle=config.allow_pickle)
    return paths, skipped, ckpt


# ----------------------------------------------------------------------------------------------------
# Saving and validation


def save_model(model: torch.nn.Module, folder: Path, config: TrainConfig) -> None:
    """Save the trained model in a form `InDomainPipeline.from_pretrained(prior, domain_unet=folder)` loads."""
    from .loading import save_adapter, save_lora

    folder.mkdir(parents=True, exist_ok=True)
    if config.lora_rank and not config.baseline:
        save_lora(model, folder)
    elif config.lora_rank:
        save_adapter(model, folder)  # the adapter, in diffusers' pipeline LoRA format (unet. keys) ...
        model.peft_config["default"].save_pretrained(folder)
        _merged_copy(model).save_pretrained(folder, safe_serialization=True)  # ... and merged: loads as a plain UNet
    else:
        model.save_pretrained(folder, safe_serialization=True)


def _merged_copy(unet: torch.nn.Module) -> torch.nn.Module:
    """A plain UNet2DConditionModel with the LoRA deltas folded into its weights."""
    import copy

    merged = copy.deepcopy(unet)
    merged.fuse_lora()
    merged.unload_lora()
    return merged


@_no_grad
def validate(model: torch.nn.Module, config: TrainConfig, step: int, device: Any) -> list:
    """Unconditional (and, with prompts, text-controlled) in-domain grids; decoded in fp32."""
    from .autopipeline import InDomainAutoPipeline

    # LoRA layers stay attached to `model`: its forward already includes them.
    single = {"config": config.prior_config} if config.prior_config else {}
    pipe = InDomainAutoPipeline.from_pretrained(config.prior, domain_unet=model, allow_pickle=config.allow_pickle,
                                                **single).to(device)
    return validation_grids(pipe, config, step)


@_no_grad
def validation_grids(pipe: Any, config: TrainConfig, step: int) -> list:
    """``samples/step<N>_uncond.png`` (and one grid per validation prompt) from ``pipe`` at the validation weights."""
    import torch
    from diffusers.image_processor import VaeImageProcessor

    from .outputs import make_grid

    pipe.vae.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    folder = Path(config.output) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    prompts: list[str | None] = [None, *config.validation_prompts]
    for i, prompt in enumerate(prompts):
        gens = [torch.Generator().manual_seed(config.seed + k) for k in range(config.num_validation_images)]
        images = pipe(
            prompt=prompt,
            num_images_per_prompt=config.num_validation_images,
            num_inference_steps=config.validation_inference_steps,
            domain_guidance_scale=config.domain_guidance_scale,
            guidance_scale=config.guidance_scale,
            generator=gens,
            output_type="pt",
        ).images
        if not torch.isfinite(images).all():
            raise NonFiniteError(f"validation at step {step} produced non-finite pixels (prompt {prompt!r})")
        pil = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images))
        name = folder / f"step{step:07d}_{'uncond' if prompt is None else f'prompt{i:02d}'}.png"
        make_grid(pil, ncols=len(pil)).save(name)
        written.append(name)
    return written


# ----------------------------------------------------------------------------------------------------
# What a run learns


class Objective:
    """What one run of the training loop learns: the model it builds, its loss on a batch, how it is saved and
    validated. The loop itself (accelerate, latent cache, EMA, checkpoints, exact resume, the output folder) is the
    same for every objective. `indomain train`'s is `DomainObjective`; `indomain distill`'s is
    `indomain.distill.DistillObjective`."""

    command = "train"  # the output folder's owner (`claim_output_dir`)
    # settings a resumed run must share with its checkpoint, each with its value in checkpoints written before it
    # existed: a mismatch is refused by name, not as a wrong weight shape
    same_on_resume: ClassVar[dict[str, Any]] = {}

    def inputs(self, config: TrainConfig, out: Path) -> dict[str, Any]:
        """The paths a run reads, which must lie apart from what it writes."""
        return _train_inputs(config, out)

    def build(self, config: TrainConfig, parts: dict, device: Any) -> torch.nn.Module:
        """The trainable model from the prior's components (``parts``, which the objective may consume)."""
        raise NotImplementedError

    def param_groups(self, model: torch.nn.Module, params: list) -> list[dict[str, Any]]:
        """The optimizer's parameter groups over ``params`` (the trained weights); a group may set its own ``lr``."""
        return [{"params": params}]

    def loss(self, model: Any, latents: torch.Tensor, noise: torch.Tensor, gens: list[torch.Generator],
             batches: LatentBatches) -> torch.Tensor:
        """The loss of one micro-batch of clean ``latents``; sample i's draws come from ``gens[i]``
        (`per_sample`), so exact resume holds and a sample's draws do not depend on its batch."""
        raise NotImplementedError

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        """Write the model (the final one, and each checkpoint's hand-loadable copy) into ``folder``."""
        raise NotImplementedError

    def validate(self, model: torch.nn.Module, step: int, device: Any) -> list:
        """Write the validation grids of ``step``; returns the files written."""
        return []

    def finish(self, out: Path, num_images: int, steps: int) -> None:
        """After the final model is saved (the model card, an upload)."""


class DomainObjective(Objective):
    """`indomain train`: the denoising loss of a domain model (or of the baseline fine-tune) on the domain images."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def build(self, config: TrainConfig, parts: dict, device: Any) -> torch.nn.Module:
        self.noise_scheduler, self.family = parts["noise_scheduler"], parts["family"]
        flow = self.family.objective == "flow"
        self.prediction_type = "flow" if flow else self.noise_scheduler.config.prediction_type
        if flow and config.snr_gamma is not None:
            raise ValueError(f"--snr-gamma (min-SNR weighting) is for diffusion priors; this prior is "
                             f"{self.family.title}, trained with the flow-matching loss")
        model, self.caption = build_model(config, parts)  # caption: the baseline's text condition, else None
        return model

    def loss(self, model: Any, latents: torch.Tensor, noise: torch.Tensor, gens: list[torch.Generator],
             batches: LatentBatches) -> torch.Tensor:
        from diffusers.training_utils import compute_snr

        from .families import call_denoiser, denoiser_inputs

        config, family, b = self.config, self.family, latents.shape[0]
        noisy, t, target = noise_and_target(family, self.noise_scheduler, latents, noise, gens)
        # the model is called as the pipelines call it; SDXL's time ids: each image's original size, crop, target size
        inputs = denoiser_inputs(family, batch_text(self.caption, b, latents.device), b,
                                 batches.time_ids.to(latents.device))
        pred = call_denoiser(family, model, noisy, t, inputs)
        snr = compute_snr(self.noise_scheduler, t) if config.snr_gamma is not None else None
        return denoising_loss(pred, target, snr, config.snr_gamma, self.prediction_type)

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        save_model(model, folder, self.config)

    def validate(self, model: torch.nn.Module, step: int, device: Any) -> list:
        return validate(model, self.config, step, device)

    def finish(self, out: Path, num_images: int, steps: int) -> None:
        atomic_write_text(out / "README.md", model_card(self.config, num_images, steps))
        if self.config.push_to_hub:
            info(f"uploaded to https://huggingface.co/{push_to_hub(out, self.config)}")


# ----------------------------------------------------------------------------------------------------
# The run


def _train_inputs(config: TrainConfig, out: Path) -> dict[str, Any]:
    """The paths a run reads, which must lie apart from what it writes (a checkpoint of this run may lie inside)."""
    resume = config.resume if config.resume not in (None, "latest") else None
    if resume is not None and Path(resume).resolve().parent == out.resolve():
        resume = None  # its own checkpoint-N
    return {"--images": config.images, "--dataset-dir": config.dataset_dir, "--prior": config.prior,
            "--prior-config": config.prior_config, "--resume": resume}


def train(config: TrainConfig, on_step: Callable[[int], None] | None = None, objective: Objective | None = None) -> Path:
    """Run training; returns the output folder. ``on_step(global_step)`` is a test hook called after each step;
    ``objective`` is what the run learns (default: a domain model, `DomainObjective`)."""
    try:
        return _train(config, on_step, objective or DomainObjective(config))
    finally:
        close_run(config.output)  # the run record lists what was written, even after an error


def _train(config: TrainConfig, on_step: Callable[[int], None] | None, objective: Objective) -> Path:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from .checkpoint import CheckpointError, check_fits, restore, weights_are_finite
    from .loading import load_prior_components

    # 1. Check every input, then claim the output folder: nothing is written before the checks pass
    paths, skipped, ckpt = check_inputs(config)
    out = Path(config.output)
    accelerator = Accelerator(
        # cpu=True without a GPU makes torchrun / `accelerate launch --multi_gpu` fall back to gloo data-parallel
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        log_with=None if config.report_to == "none" else config.report_to,
        # how long a process waits for the others (at a barrier, in a collective) before the run fails
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=config.ddp_timeout))],
    )
    config.resolve_steps(len(paths), accelerator.num_processes)
    plugin = sharding_plugin(accelerator)
    if plugin == "fsdp" and (config.use_ema or config.lora_rank):
        raise ValueError(f"{'EMA' if config.use_ema else '--lora-rank'} is not supported under FSDP (it would need "
                         "every process's weight shards); pass --no-ema and no --lora-rank, or use DeepSpeed ZeRO-2 or DDP")
    if accelerator.is_main_process:
        check_paths_apart(config.latent_cache or out / "latent_cache", objective.inputs(config, out), "--latent-cache")
        claim_output_dir(out, objective.command, overwrite=config.overwrite, reuse=config.resume is not None,
                         inputs=objective.inputs(config, out), flag="--output")
        _clean_leftovers(out)
        atomic_write_text(out / "train_config.json", to_json(dataclasses.asdict(config), indent=2))
        atomic_write_text(out / "skipped.json", to_json([{"file": str(p), "reason": r} for p, r in skipped], indent=2))
        record_outputs(out, finished=False)  # a kill during the cache still leaves a run that --overwrite may replace
    if config.report_to != "none":
        # trackers take flat scalars and strings
        flat = {k: v if isinstance(v, (int, float, str, bool)) else to_json(v) for k, v in dataclasses.asdict(config).items()}
        accelerator.init_trackers("indomain", config=flat)
    accelerator.wait_for_everyone()

    # 2. Models: the trainable one from the prior; the VAE only for the cache
    parts = load_prior_components(config.prior, allow_pickle=config.allow_pickle, config=config.prior_config)
    family = parts["family"]
    model = objective.build(config, parts, accelerator.device)
    if ckpt is not None:
        for key, before in objective.same_on_resume.items():
            made, now = ckpt.config.get(key, before), getattr(config, key)
            if made != now:
                flag = "--" + key.replace("_", "-")
                raise CheckpointError(f"checkpoint {ckpt.path} was made with {flag} {made}; this run has {flag} {now}. "
                                      f"Resume with {flag} {made}")
        check_fits(ckpt, model, config.prior)  # before hours of latent encoding
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.compile != "no":
        model.compile(backend=config.compile)  # in place: state_dict keys, saving and checkpoints are unchanged
    vae = parts.pop("vae").eval()
    if vae.device != accelerator.device:
        vae.to(accelerator.device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    scaling, shift = vae.config.scaling_factor, vae.config.get("shift_factor") if family.objective == "flow" else None
    world, rank = accelerator.num_processes, accelerator.process_index
    buckets = None
    if config.aspect_buckets == "on" or (config.aspect_buckets == "auto" and family.name in ("sdxl", "sd3")):
        from .latent_cache import aspect_buckets

        den = parts[family.denoiser].config  # the latents must survive its downsampling (UNet) or patching (MMDiT)
        step = 2 ** (len(den["block_out_channels"]) - 1) if "block_out_channels" in den else den.get("patch_size", 1)
        buckets = aspect_buckets(config.resolution, factor * step)
    source, bucket_of = None, None
    if config.cache_latents:
        cache_dir = Path(config.latent_cache or out / "latent_cache")
        inside = cache_dir.resolve().is_relative_to(out.resolve())

        def shard_written(_: Path) -> None:
            if inside and accelerator.is_main_process:
                record_outputs(out, finished=False)  # a kill after this keeps the shard on the run's record

        source = build_latent_cache(paths, vae, config, cache_dir, vae_id=str(config.prior), device=accelerator.device,
                                    rank=rank, world=world, barrier=accelerator.wait_for_everyone, on_shard=shard_written,
                                    buckets=buckets)
        if buckets is not None:  # each image's bucket, from the shards' headers
            index = {hw: b for b, hw in enumerate(buckets)}
            bucket_of = [index[tuple(d * factor for d in source.shape(i)[-2:])] for i in range(len(paths))]
        if inside and accelerator.is_main_process:
            record_outputs(out, finished=False)  # the other processes' shards too
        vae = None  # training reads the cache; the VAE is needed no more
    elif buckets is not None:  # on the fly: each image's bucket from its (upright) size
        from .data import upright_size
        from .latent_cache import bucket_for

        index = {hw: b for b, hw in enumerate(buckets)}
        bucket_of = [index[bucket_for(*upright_size(paths[i]), buckets)] for i in range(len(paths))]
    batches = LatentBatches(source, len(paths), config, config.resolution // factor, scaling, shift, factor, bucket_of)
    del parts

    # 3. Optimizer, LR schedule, EMA
    params = [p for p in model.parameters() if p.requires_grad]
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ValueError("--use-8bit-adam needs bitsandbytes: pip install bitsandbytes (a CUDA GPU is required)") from e
        optimizer_cls = bnb.optim.AdamW8bit
    else:
        optimizer_cls = torch.optim.AdamW
    optimizer = optimizer_cls(
        objective.param_groups(model, params), lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        config.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_train_steps * accelerator.num_processes,
    )
    ema = EMAModel(params, decay=config.ema_decay) if config.use_ema else None
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)

    # 4. Resume: weights, optimizer, schedule, EMA and RNG from a checked checkpoint
    global_step = 0
    log_file = out / "train_log.jsonl"
    if ckpt is not None:
        if plugin is not None:  # DeepSpeed / FSDP: the plugin's own files restore model, optimizer and schedule
            if ckpt.accelerate is None:
                raise ValueError(f"checkpoint {ckpt.path} was written without DeepSpeed / FSDP; resume it without them")
            accelerator.load_state(str(ckpt.accelerate))
            restore(ckpt, accelerator.unwrap_model(model), None, None, ema, None, weights=False)
        else:
            restore(ckpt, accelerator.unwrap_model(model), optimizer, lr_scheduler, ema, accelerator.scaler)
        _set_learning_rate(optimizer, lr_scheduler, ckpt.config.get("learning_rate"), config.learning_rate)
        global_step = ckpt.step
        if accelerator.is_main_process:
            truncate_log(log_file, global_step)
        if accelerator.is_main_process:
            info(f"resumed from {ckpt.path} at step {global_step}")
        del ckpt
    if ema is not None:
        ema.to(accelerator.device)

    # 5. The loop
    encoded = None
    if vae is not None:  # --no-latent-cache: workers read this rank's images in training order, the VAE encodes them here
        from .latent_cache import ImagePixels, as_list, encode_items

        vae.requires_grad_(False)
        loader = torch.utils.data.DataLoader(
            ImagePixels(paths, config.resolution, factor, buckets), num_workers=config.dataloader_num_workers,
            collate_fn=as_list,
            batch_sampler=PlannedBatches(batches, global_step, config.max_train_steps, rank, world))
        encoded = iter(loader)
    bar = tqdm(total=config.max_train_steps, initial=global_step, desc="training", disable=not accelerator.is_main_process)
    images_per_step = config.train_batch_size * config.gradient_accumulation_steps * world
    t_last, last_loss = time.time(), float("nan")
    while global_step < config.max_train_steps:
        for micro in range(config.gradient_accumulation_steps):
            # batches, flips, crops, noise and timesteps depend only on (seed, step, micro, rank): each sample has
            # its own generator, so the global batch is the same however many processes share it
            one = None
            if encoded is not None:
                items = next(encoded)
                one = EncodedBatch(items, encode_items(vae, items, accelerator.device))
            latents, gens = batches.get(global_step, micro, rank, world, one)
            latents = latents.to(accelerator.device)
            noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in gens]).to(accelerator.device)
            with accelerator.accumulate(model):
                loss = objective.loss(model, latents, noise, gens, batches)
                if not torch.isfinite(loss):
                    # the weights of this step already diverge: only checkpoints before it are good
                    bar.close()
                    raise NonFiniteError(f"training diverged: non-finite loss {loss.item()} at step {global_step}; "
                                         + _last_good(out, global_step, config))
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            last_loss = accelerator.reduce(loss.detach(), "mean").item()  # averaged over processes for logging
        if ema is not None:
            ema.step(params)
        global_step += 1
        bar.update(1)

        now = time.time()
        speed = images_per_step / max(now - t_last, 1e-9)
        t_last = now
        bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{speed:.1f}")
        if accelerator.is_main_process and (global_step % config.log_every == 0 or global_step == config.max_train_steps):
            record = {"step": global_step, "world_size": world, "loss": last_loss, "lr": lr_scheduler.get_last_lr()[0],
                      "images_per_s": round(speed, 2), "time": now}
            with log_file.open("a") as f:
                f.write(to_json(record) + "\n")
            accelerator.log({k: record[k] for k in ("loss", "lr", "images_per_s")}, step=global_step)
        # validate first: weights that decode to NaN never become a checkpoint
        if config.validation_steps and global_step % config.validation_steps == 0 and accelerator.is_main_process:
            with _ema_weights(ema, params):
                try:
                    objective.validate(accelerator.unwrap_model(model), global_step, accelerator.device)
                except NonFiniteError as e:
                    bar.close()
                    raise NonFiniteError(f"{e}; {_last_good(out, global_step, config)}") from None
        if global_step % config.checkpointing_steps == 0 or global_step == config.max_train_steps:
            save_checkpoint(accelerator, out, global_step, config, model, optimizer, lr_scheduler, ema, params,
                            objective.save)
        if on_step is not None:
            on_step(global_step)
    bar.close()

    # 6. Final model: EMA weights at the top, raw weights in raw/; each written aside, then moved in
    accelerator.wait_for_everyone()
    gathered = accelerator.get_state_dict(model) if plugin == "fsdp" else None  # collective: FSDP's shards joined
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if not weights_are_finite(params if gathered is None else list(gathered.values())):
            raise NonFiniteError(f"the final weights are not finite; {_last_good(out, global_step, config)}")
        if gathered is not None:  # FSDP (no EMA): the gathered weights, at the top and in raw/
            for sub in ("raw", None):
                _save_aside(out, sub, lambda d: _save_state_dict(unwrapped, gathered, d))
        else:
            _save_aside(out, "raw", lambda d: objective.save(unwrapped, d))
            with _ema_weights(ema, params):
                _save_aside(out, None, lambda d: objective.save(unwrapped, d))
        objective.finish(out, len(paths), global_step)
    accelerator.end_training()
    # Forget this run's precision settings so a later train() in the same process may choose others.
    AcceleratorState._reset_state(reset_partial_state=False)
    return out


def model_card(config: TrainConfig, num_images: int, steps: int) -> str:
    """``README.md`` for the trained model: YAML metadata (Hugging Face model-card format) and how to use it."""
    from huggingface_hub import ModelCardData

    from .version import __version__

    kind = "conventional fine-tune (baseline)" if config.baseline else f"null-text domain model ({config.mode} mode)"
    kind += f", LoRA rank {config.lora_rank}" if config.lora_rank else ", all weights"
    data = ModelCardData(library_name="diffusers", base_model=hub_base_model(config.prior), pipeline_tag="text-to-image",
                         tags=["indomain", "null-text", "domain-adaptation", "text-to-image"])
    here = config.hub_model_id if config.push_to_hub and config.hub_model_id else config.output
    settings = ["resolution", "train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler",
                "use_ema", "ema_decay", "mixed_precision", "snr_gamma", "seed"]
    rows = "\n".join(f"| `{k}` | `{getattr(config, k)}` |" for k in settings)
    single = f", config=\"{config.prior_config}\"" if config.prior_config else ""  # a single-file prior's configs
    use = ("from diffusers import UNet2DConditionModel\nfrom indomain import InDomainPipeline\n\n"
           f"pipe = InDomainPipeline.from_pretrained(\"{config.prior}\"{single}, "
           f"unet=UNet2DConditionModel.from_pretrained(\"{here}\"))"
           if config.baseline else
           f"from indomain import InDomainAutoPipeline\n\npipe = InDomainAutoPipeline.from_pretrained(\"{config.prior}\"{single}, "
           f"domain_unet=\"{here}\")\nimages = pipe(\"a prompt\", domain_guidance_scale=2.5, guidance_scale=2.5).images")
    return f"""---
{data.to_yaml()}
---

# Domain model: {Path(_image_source(config)).name}

A {kind} for the prior `{config.prior}`, trained with [indomain](https://arxiv.org/abs/2312.08195) {__version__}
on {num_images} unlabeled images from `{_image_source(config)}` for {steps} optimizer steps. Every setting is in
`train_config.json`; the training curve in `train_log.jsonl`; files that were skipped in `skipped.json`.

| setting | value |
|---|---|
{rows}

## Training command

```bash
{train_command(config)}
```
{_samples_section(Path(config.output))}
## Use

```python
{use}
```
"""


def _image_source(config: TrainConfig) -> str:
    """Where the images came from: the --images folder, or the dataset."""
    return config.images or config.dataset_name or config.dataset_dir or ""


def hub_base_model(prior: str) -> str | None:
    """The model card's ``base_model``: the prior's hub id when it came from the hub, else None (a local path means
    nothing to a Hub reader)."""
    from .safeload import HUB_ID

    if Path(prior).expanduser().exists() or not HUB_ID.match(str(prior)) or str(prior).startswith("."):
        return None
    return str(prior)


def train_command(config: TrainConfig) -> str:
    """An `indomain train` command line that gives ``config`` (every option that differs from its default)."""
    import shlex

    parts = ["indomain", "train"]
    for f in dataclasses.fields(TrainConfig):
        value = getattr(config, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if value == default and default is not dataclasses.MISSING:
            continue
        if isinstance(value, bool):
            parts.append(f.metadata.get("flag") or "--" + ("no-" if default else "") + f.name.replace("_", "-"))
            continue
        parts.append(f.metadata.get("flag") or "--" + f.name.replace("_", "-"))
        parts += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _samples_section(out: Path) -> str:
    """The last validation grids, shown in the card (they are uploaded with it)."""
    samples = sorted((out / "samples").glob("*.png")) if (out / "samples").is_dir() else []
    if not samples:
        return ""
    last = samples[-1].name.split("_")[0]
    shown = [p for p in samples if p.name.startswith(last)]
    return "\n## Samples\n\n" + "\n".join(f"![{p.stem}](samples/{p.name})" for p in shown) + "\n"


HUB_IGNORE = ["checkpoint-*", "checkpoint-*/**", "latent_cache/**", "logs/**", ".tmp*", ".*", "**/.*"]


def hub_upload_plan(out: Path) -> list[str]:
    """The files ``--push-to-hub`` uploads from a finished run (paths relative to ``out``): the model, its card,
    samples and settings; never checkpoints, the latent cache, tracker logs or hidden files."""
    import fnmatch

    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in HUB_IGNORE)]


def push_to_hub(out: Path, config: TrainConfig) -> str:
    """Create (or reuse) the Hub repository and upload `hub_upload_plan`'s files; returns the repository id."""
    from huggingface_hub import HfApi

    repo_id = config.hub_model_id or Path(config.output).resolve().name
    api = HfApi()
    repo_id = api.create_repo(repo_id, exist_ok=True).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=str(out), allow_patterns=hub_upload_plan(out),
                      commit_message=f"indomain train: {Path(_image_source(config)).name}")
    return repo_id


def _save_aside(out: Path, sub: str | None, save: Callable[[Path], None]) -> None:
    """``save`` into ``out/.tmp-<sub>`` first, then move the files into place: a kill leaves only a ``.tmp`` folder."""
    tmp = out / f".tmp-{sub or 'model'}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save(tmp)
    if sub is not None:
        with atomic_path(out / sub) as final:
            os.replace(tmp, final)
        return
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()


def _set_learning_rate(optimizer: Any, lr_scheduler: Any, old: float | None, new: float) -> None:
    """A resumed run uses this run's --learning-rate, not the checkpoint's (the way out of a divergence)."""
    if old is None or old == new:
        return
    ratio = new / old
    sched = getattr(lr_scheduler, "scheduler", lr_scheduler)
    sched.base_lrs = [lr * ratio for lr in sched.base_lrs]
    sched._last_lr = [lr * ratio for lr in sched.get_last_lr()]
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    info(f"learning rate {old:g} -> {new:g} (from this run's settings, not the checkpoint's)")


@contextlib.contextmanager
def _ema_weights(ema: Any, params: list) -> Iterator[None]:
    """Swap the EMA weights into the model for the block; the raw ones come back afterwards."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


# ----------------------------------------------------------------------------------------------------
# CLI


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser(
        "train",
        help=help,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, TrainConfig)
    add_options(p, DryRun)
    add_diffusers_aliases(p)
    p.set_defaults(func=cmd_train)


# diffusers' train_text_to_image.py names -> ours, so that existing launch scripts run (train_text_to_image_lora: --rank)
DIFFUSERS_FLAGS = {"--pretrained_model_name_or_path": "prior", "--train_data_dir": "images", "--output_dir": "output",
                   "--resume_from_checkpoint": "resume", "--rank": "lora_rank", "--use_ema": "use_ema",
                   "--center_crop": "center_crop", "--random_flip": "random_flip"}


def add_diffusers_aliases(parser: argparse.ArgumentParser) -> None:
    """Hidden aliases: diffusers' flag names (`DIFFUSERS_FLAGS`) and the underscore form of every flag
    (``--train_batch_size`` for ``--train-batch-size``). diffusers' on-switches (``--use_ema``, ``--center_crop``,
    ``--random_flip``) set what are our defaults already."""
    by_dest = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "verbosity")}
    aliases = dict(DIFFUSERS_FLAGS)
    for action in by_dest.values():
        for flag in action.option_strings:
            if flag.startswith("--") and "-" in flag[2:]:
                aliases.setdefault("--" + flag[2:].replace("-", "_"), action.dest)
    known = set(parser._option_string_actions)
    for dest in set(DIFFUSERS_FLAGS.values()):  # argparse's "required" sees one spelling only; cmd_train checks instead
        if dest in by_dest and by_dest[dest].required:
            by_dest[dest].required = False
            by_dest[dest].default = None
    for alias, dest in aliases.items():
        action = by_dest.get(dest)
        if alias in known or action is None:
            continue
        kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
        if alias in ("--use_ema", "--center_crop", "--random_flip"):
            kw.update(action="store_const", const=True)  # diffusers' switch turns on what is on by default here
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)):
            kw.update(action="store_const", const=action.const)
        else:
            kw.update(type=action.type, choices=action.choices, nargs=action.nargs, metavar=action.metavar)
        parser.add_argument(alias, **kw)
    parser.epilog = ((parser.epilog or "") + "diffusers' flag names work too: --pretrained_model_name_or_path, "
                     "--train_data_dir, --output_dir, --resume_from_checkpoint, --rank, and the underscore form of "
                     "every flag (--train_batch_size, ...).")


def cmd_train(args: argparse.Namespace) -> int:
    for dest in ("prior", "images", "output"):
        if dest == "images" and (getattr(args, "dataset_name", None) or getattr(args, "dataset_dir", None)):
            continue
        if getattr(args, dest, None) is None:
            alias = next(a for a, d in DIFFUSERS_FLAGS.items() if d == dest)
            raise ValueError(f"the following argument is required: --{dest} (or diffusers' {alias})")
    config = from_args(TrainConfig, args)
    if from_args(DryRun, args).dry_run:
        print(to_json(dataclasses.asdict(config), indent=2))
        return 0
    out = train(config)
    print(f"saved model to {out}")
    if not config.baseline:
        from .console import info

        info(f"next: `indomain generate --prior {config.prior} --domain {out} --prompt ...`; to choose its guidance "
             f"weights for a goal once, `indomain tune --prior {config.prior} --domain {out} ...` (stored with the model)")
    return 0
