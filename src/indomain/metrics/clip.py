"""CLIP score of images against texts, with a local CLIP model (:func:`clip_score`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torchmetrics
from torch import Tensor, nn

from .images import PREPROCESS_RULE, ImageSource, count_images, iter_image_batches
from .result import MetricResult, MissingWeightsError

__all__ = ["clip_score"]


class _CLIPFeatures(nn.Module):
    """Adapter for torchmetrics 1.9 + transformers 5: ``get_*_features`` now return a ModelOutput whose
    ``pooler_output`` holds the projected embedding, while torchmetrics expects the tensor itself."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model
        self.config = model.config  # torchmetrics reads text_config.max_position_embeddings

    @staticmethod
    def _tensor(output: Any) -> Tensor:
        return output if isinstance(output, Tensor) else output.pooler_output

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def _clip_loader(model_dir: Path) -> Callable[[], tuple[nn.Module, Any]]:
    def load() -> tuple[nn.Module, Any]:
        from transformers import CLIPModel, CLIPProcessor

        # local_files_only: a directory path is never resolved against the hub.
        model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True)
        processor = CLIPProcessor.from_pretrained(str(model_dir), local_files_only=True)
        return _CLIPFeatures(model.eval()), processor

    return load


def _crop_size(processor: Any) -> int:
    """Side of the square image the CLIP processor feeds its model (crop size, else resize size, else 224)."""
    for attr, key in (("crop_size", "height"), ("size", "shortest_edge")):
        value = getattr(processor.image_processor, attr, None)
        if isinstance(value, Mapping):
            value = value.get(key)
        elif value is not None and not isinstance(value, int):
            value = getattr(value, key, None)  # transformers 5 SizeDict
        if isinstance(value, int):
            return value
    return 224


def clip_score(
    images: ImageSource,
    texts: str | Sequence[str],
    clip_model_dir: str | os.PathLike | None,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> MetricResult:
    """CLIP score of images against texts with torchmetrics ``CLIPScore`` and a LOCAL CLIP model directory.

    Score = ``max(100 * mean_i cos(E_image_i, E_text_i), 0)`` (torchmetrics' definition: the clamp is on the mean).
    ``texts`` are taken as given (the scored text may differ from the generation prompt); one string is used for
    every image. Images follow the size rule at the processor's crop size (center crop + bicubic, like CLIP's own
    preprocessing), then go to torchmetrics as uint8 0..255, because the HF processor rescales by 1/255 itself.
    ``clip_model_dir`` is a ``save_pretrained`` / hub-snapshot folder (config, weights, tokenizer, processor files),
    e.g. of ``openai/clip-vit-large-patch14`` as in the paper; nothing is downloaded.
    """
    from torchmetrics.multimodal.clip_score import CLIPScore

    model_dir = Path(clip_model_dir).expanduser() if clip_model_dir is not None else None
    if model_dir is None or not (model_dir / "config.json").is_file():
        where = f"{str(model_dir)!r} is not such a directory (no config.json). " if model_dir else ""
        raise MissingWeightsError(
            "CLIP score needs a local CLIP model directory (transformers save_pretrained or hub snapshot with "
            "config.json, weights, tokenizer and preprocessor files, e.g. openai/clip-vit-large-patch14). "
            f"{where}Nothing is downloaded at run time: pass it with --clip-model DIR."
        )
    text_list = [texts] if isinstance(texts, str) else list(texts)
    n_images = count_images(images)
    if isinstance(texts, str) and n_images is not None:
        text_list = text_list * n_images
    if n_images is not None and len(text_list) != n_images:
        raise ValueError(f"CLIP score needs one text per image: got {n_images} images and {len(text_list)} texts")

    # The callable form keeps torchmetrics away from the hub; it is typed for CLIPModel, we pass an adapter.
    metric = CLIPScore(model_name_or_path=cast(Any, _clip_loader(model_dir)), sync_on_compute=False)
    if device is not None:
        metric = metric.to(device)
    resolution = _crop_size(metric.processor)
    seen = 0
    with torch.no_grad():
        for batch in iter_image_batches(images, resolution, batch_size):
            if isinstance(texts, str):
                batch_texts = [texts] * batch.shape[0]
            else:
                batch_texts = text_list[seen : seen + batch.shape[0]]
            if len(batch_texts) != batch.shape[0]:
                raise ValueError(f"CLIP score needs one text per image: got more than {len(text_list)} images")
            pixels = (batch * 255).round().to(torch.uint8)
            if device is not None:
                pixels = pixels.to(device)
            metric.update(pixels, batch_texts)
            seen += batch.shape[0]
        if seen == 0:
            raise ValueError("CLIP score got no images")
        if not isinstance(texts, str) and seen != len(text_list):
            raise ValueError(f"CLIP score needs one text per image: got {seen} images and {len(text_list)} texts")
        value = float(metric.compute())
    config = metric.model.config
    return MetricResult(
        metric="clip_score",
        value=value,
        std=None,
        library="torchmetrics",
        library_version=torchmetrics.__version__,
        extractor=f"CLIPModel:{model_dir.name}",
        extractor_id=f"clip:{model_dir.resolve()}",
        feature_dim=int(getattr(config, "projection_dim", 0)) or None,
        resize_mode=f"CLIP processor (resize shortest edge + center crop {resolution}, normalize)",
        preprocess=PREPROCESS_RULE.format(r=resolution) + "; sent as uint8 0..255",
        resolution=resolution,
        n_real=None,
        n_generated=seen,
        params={"clip_model_dir": str(model_dir.resolve()), "definition": "max(100 * mean cos(image, text), 0)"},
    )
