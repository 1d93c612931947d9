"""Scores for in-domain image generation: FID, KID and CLIP score through torchmetrics; improved precision/recall.

Protocol (the same for every metric, and recorded in every :class:`MetricResult`)
---------------------------------------------------------------------------------
* **Image convention.** Images enter as float tensors in ``[0, 1]`` of shape ``(N, 3, H, W)`` (uint8 tensors in
  ``[0, 255]`` are accepted and divided by 255), as PIL images, or as a folder. Float tensors outside ``[0, 1]``
  (for example diffusers' ``[-1, 1]``) are refused rather than silently clipped.
* **Folders** are read exactly as training reads them (:mod:`indomain.data`): recursive, hidden paths skipped,
  sorted; a file is judged by its content (PNG, JPEG, WebP, BMP), and other or broken files are left out with one
  warning. Each file becomes RGB with its EXIF orientation applied, transparency composited on **white** (emoji and
  icons are RGBA) and 16-bit images scaled, not clipped. PIL images and RGBA tensors get the same conversion.
* **Images of different sizes** (the rule, see :func:`preprocess_image`): a non-square image is center-cropped to
  its largest square, then every image whose size differs from the evaluation resolution ``R`` is resized to
  ``R x R`` with PIL **bicubic**. Real and generated images follow the same rule, so both sets reach the feature
  extractor at the same size. Tensors already at ``R x R`` pass through untouched.
* **Feature space.** FID and KID are computed on the features of a pluggable extractor: any ``nn.Module`` that maps
  a float ``(N, 3, R, R)`` batch in ``[0, 1]`` to ``(N, D)`` features (the emoji world uses its own classifier), or
  :class:`FIDInceptionV3`, the standard FID network (pool3, 2048-d), loaded from a weights file the user supplies.
  The statistic itself (Fréchet distance, polynomial-kernel MMD) is torchmetrics' ``FrechetInceptionDistance`` /
  ``KernelInceptionDistance`` fed with those features.
* **Precision and recall** (:func:`precision_recall`, Kynkäänniemi et al. 2019) take two feature matrices from any
  such extractor: the share of generated samples inside the real k-NN manifold, and of real samples inside the
  generated one (pure torch). Blobs with a plausible mean and covariance fool a Fréchet distance, not precision.
* **Real-image statistics are cached** per (folder content, extractor identity, resolution) as safetensors; see
  :func:`real_image_stats`.

FID values are only comparable when library, extractor, resize mode, resolution and sample counts all match
(torchmetrics >= 1.8 resizes with antialiasing, torch-fidelity/TF FID without): that is why each result records
them.

Layout: ``images`` (reading and preprocessing), ``stats`` (features, statistics, Fréchet distance, the cache),
``image_metrics`` (FID/KID), ``precision_recall`` (k-NN precision and recall), ``clip`` (CLIP score), ``inception``
(the vendored FID network), ``random_conv`` (:class:`RandomConvFeatures`, a feature space for smoke tests),
``result`` (:class:`MetricResult`). Import from here: ``from indomain.metrics import image_metrics``.
"""

from __future__ import annotations

from .clip import clip_score
from .image_metrics import check_kid_subset, image_metrics
from .images import (
    ImageFolderError,
    ImageSource,
    as_image_batch,
    iter_image_batches,
    list_images,
    preprocess_image,
)
from .inception import INCEPTION_WEIGHTS_FILENAME, INCEPTION_WEIGHTS_URL, FIDInceptionV3, inception_extractor
from .precision_recall import PrecisionRecall, in_manifold, knn_radii, precision_recall
from .random_conv import RandomConvFeatures
from .result import MetricResult, MissingWeightsError
from .stats import (
    FeatureStats,
    default_cache_dir,
    describe_extractor,
    extract_features,
    frechet_distance,
    real_image_stats,
    weights_digest,
)

__all__ = [
    "INCEPTION_WEIGHTS_FILENAME",
    "INCEPTION_WEIGHTS_URL",
    "FIDInceptionV3",
    "FeatureStats",
    "ImageFolderError",
    "ImageSource",
    "MetricResult",
    "MissingWeightsError",
    "PrecisionRecall",
    "RandomConvFeatures",
    "as_image_batch",
    "check_kid_subset",
    "clip_score",
    "default_cache_dir",
    "describe_extractor",
    "extract_features",
    "frechet_distance",
    "image_metrics",
    "in_manifold",
    "inception_extractor",
    "iter_image_batches",
    "knn_radii",
    "list_images",
    "precision_recall",
    "preprocess_image",
    "real_image_stats",
    "weights_digest",
]
