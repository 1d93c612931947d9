"""One batched call for the prior and a LoRA domain model that shares its weights.

A LoRA null-text domain model (`indomain train --lora-rank R`) is the prior's UNet plus low-rank adapters, with every
cross-attention output replaced by its calibrated constant. Loaded the usual way it becomes a second, fused UNet: twice
the UNet weights in memory, and the domain branch in a call of its own. `SharedBaseDomain` instead puts the adapters on
the prior's own UNet (peft adapter ``indomain_domain``, inactive in ordinary calls) and the constants in forward hooks on
its cross-attention layers. One UNet call can then serve a batch that mixes prior rows and domain rows:

* peft's mixed-adapter batches (``adapter_names``, one per row; ``"__base__"`` for the prior's rows) apply the adapter
  to the domain rows only;
* the hooks replace the domain rows' cross-attention output by the constants, which is what the null-text UNet computes.

The domain weights cost the adapter's size instead of a second UNet, and every branch of Eq. C runs in one call per
step. The pipeline marks domain rows with a per-row flag in the prior's conditions (`ROWS`), so `MultiGuidance` batches
them with the prior's branches like any other condition.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .loading import BUFFERS_FILE, LORA_WEIGHTS, is_lora_folder, lora_prefix
from .nulltext import STRUCTURE_KEYS
from .outputs import read_json_object
from .safeload import check_safe, read_safetensors

ADAPTER = "indomain_domain"  # the adapter name on the prior's UNet
ROWS = "indomain_domain_rows"  # the key of the per-row domain flags (a bool CPU tensor) in a prior condition


class SharedBaseDomain:
    """A LoRA null-text domain model served by the prior's UNet (see the module docstring).

    Args:
        unet: the prior's `UNet2DConditionModel`; it gets the adapter and the hooks.
        folder: an adapter-only domain model folder, as `indomain train --lora-rank` writes it (constant mode).
    """

    def __init__(self, unet: Any, folder: str | Path) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        folder = Path(folder)
        if not is_lora_folder(folder) or not (folder / LORA_WEIGHTS).is_file():
            raise ValueError(f"{str(folder)!r} is not an adapter-only (LoRA) domain model folder; only those can share "
                             "the prior's weights (train one with `indomain train --lora-rank R`)")
        if getattr(unet, "_hf_peft_config_loaded", False):
            raise ValueError("the prior's UNet already has LoRA adapters; a shared-base domain model needs it without "
                             "(load the domain model first, or use a separate domain model)")
        check_safe(folder)  # every safetensors header readable, before peft or diffusers read one
        self.config = read_json_object(folder / "config.json", "a domain model's config")
        if self.config.get("mode", "constant") != "constant":
            raise ValueError(f"a shared-base domain model must be in constant mode, {str(folder)!r} is {self.config['mode']!r}")
        for key in STRUCTURE_KEYS:
            a, b = unet.config.get(key), self.config["unet_config"].get(key)
            a, b = (list(v) if isinstance(v, (tuple, list)) else v for v in (a, b))
            if a != b:
                raise ValueError(f"domain model {str(folder)!r} does not fit the prior: its {key} is {b!r}, the prior's {a!r}")
        with warnings.catch_warnings():
            # the adapter config names cross-attention projections that the null-text model replaced by constants, so
            # the file has no weights for them; peft adds them with a zero delta and warns. Those rows' outputs are
            # replaced by the constants anyway.
            warnings.filterwarnings("ignore", message=".*inconsistency was discovered between the PEFT config")
            unet.load_lora_adapter(str(folder), weight_name=LORA_WEIGHTS, prefix=lora_prefix(folder / LORA_WEIGHTS),
                                   adapter_name=ADAPTER)
        self.lora_layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
        for layer in self.lora_layers:  # ordinary calls: the prior alone
            layer.set_adapter([a for a in layer.active_adapters if a != ADAPTER])
        modules = dict(unet.named_modules())
        self._mask: torch.Tensor | None = None
        self.hooks = []
        for key, value in read_safetensors(folder / BUFFERS_FILE, "the calibrated constants")[0].items():
            if not key.endswith(".null_text_feature"):
                continue
            name = key.removeprefix("unet.").removesuffix(".null_text_feature")
            if name not in modules:
                raise ValueError(f"domain model {str(folder)!r} has a constant for {name}, which the prior's UNet lacks")
            self.hooks.append(modules[name].register_forward_hook(self._replace(value.to(unet.device, unet.dtype))))
        self.weights = sum(layer.lora_A[ADAPTER].weight.numel() + layer.lora_B[ADAPTER].weight.numel()
                           for layer in self.lora_layers if ADAPTER in layer.lora_A)

    def _replace(self, constant: torch.Tensor):
        def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            if self._mask is None:
                return output
            c = constant.to(device=output.device, dtype=output.dtype)
            return torch.where(self._mask.to(output.device)[:, None, None], c, output)
        return hook

    @contextlib.contextmanager
    def rows(self, flags: torch.Tensor | None) -> Iterator[None]:
        """Within this block, UNet calls treat the rows where ``flags`` (a (B,) bool CPU tensor) is set as domain rows."""
        if flags is None or not bool(flags.any()):
            yield
            return
        names = [ADAPTER if f else "__base__" for f in flags.tolist()]  # a CPU tensor: no device sync

        def inject(module: torch.nn.Module, args: Any, kwargs: dict) -> tuple:
            return args, {**kwargs, "adapter_names": names}

        handles = [layer.register_forward_pre_hook(inject, with_kwargs=True) for layer in self.lora_layers]
        self._mask = flags
        try:
            yield
        finally:
            self._mask = None
            for h in handles:
                h.remove()


def flags(n: int, domain: bool) -> torch.Tensor:
    """The per-row domain flags of a condition with ``n`` rows."""
    return torch.full((n,), domain, dtype=torch.bool)
