"""The emoji world's evaluators: controllability and fidelity of generated 32x32 emoji, offline.

    ev = load_evaluators()                       # the shipped weights (indomain_emoji/evaluators/)
    ev.retrieval_top1(images, names, k=10)       # controllability: is each image the prompted emoji?
    ev.openmoji_share(images)                    # fidelity: share judged to be in the OpenMoji (domain) style
    ev.frechet_to_openmoji(images)               # fidelity: Fréchet distance to real OpenMoji renders
    ev.precision_recall(images)                  # fidelity: k-NN precision (realism) and recall (coverage)
    evaluate(..., scorer=ev.scorer(k=10))        # columns control_top1, fd_openmoji, openmoji_share,
                                                 #   precision_openmoji, recall_openmoji

One small CNN (:class:`EmojiNet`, pure torch, ~0.5M parameters) trained here on the rendered world with two
heads over a shared trunk:

* an **embedding head** (128-d, L2-normalised), trained as a cosine-softmax emoji-identity classifier over all
  1,377 emoji and all three styles, so that the same emoji in different styles lands close together;
* a **style head** (noto / twemoji / openmoji).

Training and validation live in :mod:`indomain.world.evaluator_training`.

Choices, documented once here
-----------------------------
* **Inputs.** PIL images (any size and mode; transparency composited on white; resized to 32x32 with PIL bicubic) or
  float tensors in ``[0, 1]`` of shape ``(N, 3, H, W)`` / ``(3, H, W)``, checked by
  :func:`indomain.metrics.as_image_batch` (uint8 tensors are divided by 255) and resized with antialiased bicubic
  when not 32x32.
* **Controllability** (:meth:`EmojiEvaluators.retrieval_top1`): for image ``i`` prompted with emoji ``t``, the
  candidates are ``t`` plus ``k - 1`` other emoji of the world drawn with ``numpy.random.default_rng(seed)``, one draw
  per image in input order (so the same prompt list gives the same candidates in every setting). Each candidate is
  represented by the embeddings of its real 32 px renderings in ``styles`` (default: all three); the score of a
  candidate is the **mean over styles of the cosine similarity** (``reduce="mean"``; ``"max"`` is available). The
  image is a hit when the prompted emoji scores strictly highest. Chance is ``1 / k``.
* **Fidelity.** (a) Fréchet distance (:func:`indomain.metrics.frechet_distance`) in the trunk's 192-d pooled feature
  space between the images and the **reference: OpenMoji renders of the ``split_emoji`` *seen* emoji** (the domain
  training set, 1,101 images; stats computed once per evaluator and cached in memory). (b) The share of images whose
  style-head argmax is ``openmoji``.
* **Precision and recall** (:meth:`EmojiEvaluators.precision_recall`, Kynkäänniemi et al. 2019, k = 3) in the same
  192-d space against the same reference: the share of images inside the reference's k-NN manifold, and the share of
  the reference inside the images'.
* **Which metric to trust where** (the card's ``sanity`` table, :mod:`indomain.world.evaluator_sanity`, 110 images per
  case; docs/RESULTS.md). ``fd_openmoji`` ranks every known case correctly: real renders best, then the VAE round
  trip, then blobs, other styles and noise; so does ``openmoji_share``, though it gives half of a set of mean-colour
  discs the OpenMoji style. ``precision_openmoji`` flags other styles, noise and heavy blur, but **not** blobs: a disc
  of an emoji's mean colour looks like OpenMoji's own circle emoji, so discs keep nearly the precision of real
  renders. ``recall_openmoji`` flags blobs but not another style (Twemoji). Read the two together, never one alone.
  ``control_top1`` tells apart the cases that keep the drawing (other styles, blur) from those that erase it (discs,
  noise). The VAE round trip scores well below real renders on every fidelity metric: the ceiling for images decoded
  by the emoji prior's VAE. FD depends strongly on N, precision and recall little. The figures are in the card and in
  docs/RESULTS.md, "Do the metrics rank known cases correctly?".
* **Honest validation, the held-out renders.** Evaluator training never sees: the **OpenMoji** renders of the
  ``split_emoji(seed=0)`` held-out emoji (the domain protocol's held-out set, 276 emoji), the **Noto** renders of a
  fixed 8% of the other emoji, and the **Twemoji** renders of a disjoint fixed 8% (both drawn by
  ``sha256("indomain-evaluator-holdout:{style}:{codepoint}")``). Each emoji thus keeps at least two styles in
  training, so the evaluator knows the identity of every emoji (the controllability metric needs that for held-out
  prompts), while every style has unseen renders to validate on; see :func:`evaluator_holdout`.
* **Weights** are safetensors (``indomain_emoji/evaluators/evaluators.safetensors``, fp32) with the architecture in the
  file's metadata; the training-only identity classifier is not shipped. ``card.json`` beside it is the model card
  (data, steps, time, hardware, parameter count, validation figures). Rebuild both with
  :func:`indomain.world.evaluator_training.train_evaluators`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import composite_on_white
from ..evaluate import Scorer
from ..metrics import MissingWeightsError, PrecisionRecall, as_image_batch, frechet_distance, in_manifold, knn_radii
from .domains import Domain, get_domain
from .render import STYLES, Emoji, list_emoji, render, shipped_weights, split_emoji

__all__ = [
    "CARD_FILENAME",
    "INPUT_SIZE",
    "WEIGHTS_FILENAME",
    "EmojiEvaluators",
    "EmojiFeatureExtractor",
    "EmojiNet",
    "default_evaluator_dir",
    "evaluator_holdout",
    "load_evaluators",
    "render_batch",
    "to_batch",
    "train_command",
]

INPUT_SIZE = 32
WEIGHTS_FILENAME = "evaluators.safetensors"
CARD_FILENAME = "card.json"
OPENMOJI = STYLES.index("openmoji")

#: Seed of the domain protocol's split (``split_emoji``); its held-out emoji's OpenMoji renders are never trained on.
DOMAIN_SPLIT_SEED = 0
#: Fraction of the world whose Noto (resp. Twemoji) render is held out of evaluator training.
PRIOR_STYLE_HOLDOUT_FRACTION = 0.08

ImageInput = Tensor | Sequence[PIL.Image.Image | Tensor]


def default_evaluator_dir() -> Path:
    """``evaluators/`` of the ``indomain-emoji`` package: where the shipped weights and card live."""
    return shipped_weights("evaluators")


def train_command(out_dir: str | os.PathLike | None = None) -> str:
    """The shell command that trains the evaluators into ``out_dir`` (default: the shipped folder)."""
    return "indomain world train-evaluators" + ("" if out_dir is None else f" --out {shlex.quote(str(out_dir))}")


# --------------------------------------------------------------------------- the network


class EmojiNet(nn.Module):
    """Conv trunk (4 blocks, 32->16->8->4, global average pool) with an embedding head and a style head.

    ``forward(x)`` takes ``(N, 3, 32, 32)`` in ``[0, 1]`` and returns ``(features, embedding, style_logits)``:
    pooled trunk features (the Fréchet space), the L2-normalised embedding and the 3-way style logits.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128, 192),
        convs: Sequence[int] = (1, 2, 2, 1),
        emb_dim: int = 128,
        n_styles: int = len(STYLES),
    ) -> None:
        super().__init__()
        if len(channels) != len(convs):
            raise ValueError("channels and convs must have the same length")
        layers: list[nn.Module] = []
        c_in = 3
        for b, (c_out, n) in enumerate(zip(channels, convs)):
            for j in range(n):
                layers += [
                    nn.Conv2d(c_in if j == 0 else c_out, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                ]
            c_in = c_out
            if b < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
        self.trunk = nn.Sequential(*layers)
        self.embed_head = nn.Linear(c_in, emb_dim)
        self.style_head = nn.Linear(c_in, n_styles)
        self.config = {"channels": list(channels), "convs": list(convs), "emb_dim": emb_dim, "n_styles": n_styles}
        self.feature_dim = c_in

    def features(self, x: Tensor) -> Tensor:
        return self.trunk((x - 0.5) / 0.5).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = self.features(x)
        return feats, F.normalize(self.embed_head(feats), dim=1), self.style_head(feats)


class EmojiFeatureExtractor(nn.Module):
    """The trunk's pooled features as an :mod:`indomain.metrics` extractor (``(N, 3, 32, 32)`` in ``[0, 1]``)."""

    input_resolution = INPUT_SIZE
    display_name = "emoji-evaluator"
    resize_mode = "none"

    def __init__(self, net: EmojiNet) -> None:
        super().__init__()
        self.net = net
        self.eval()

    def train(self, mode: bool = True) -> EmojiFeatureExtractor:
        # A frozen evaluator: always in eval mode, so that no caller's train()/restore puts BatchNorm in batch-stats
        # mode (which would also overwrite its running statistics).
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net.features(x)


# --------------------------------------------------------------------------- images in


def _pil_to_array(image: PIL.Image.Image) -> np.ndarray:
    image = composite_on_white(image)
    if image.size != (INPUT_SIZE, INPUT_SIZE):
        image = image.resize((INPUT_SIZE, INPUT_SIZE), PIL.Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _tensor_batch(x: Tensor) -> Tensor:
    x = as_image_batch(x).cpu()
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0, 1)


def to_batch(images: ImageInput) -> Tensor:
    """Images (PIL of any size/mode, or float tensors in [0, 1]) as a float ``(N, 3, 32, 32)`` batch in [0, 1]."""
    if isinstance(images, Tensor):
        return _tensor_batch(images)
    if isinstance(images, PIL.Image.Image):
        images = [images]
    parts: list[Tensor] = []
    for im in images:
        if isinstance(im, PIL.Image.Image):
            parts.append(torch.from_numpy(_pil_to_array(im).copy()).permute(2, 0, 1).float().div(255).unsqueeze(0))
        elif isinstance(im, Tensor):
            parts.append(_tensor_batch(im))
        else:
            raise TypeError(f"expected PIL images or tensors, got {type(im).__name__}")
    if not parts:
        return torch.zeros(0, 3, INPUT_SIZE, INPUT_SIZE)
    return torch.cat(parts)


_RENDER_CACHE: dict[tuple[str, str], np.ndarray] = {}


def render_batch(emojis: Sequence[Emoji], style: str) -> Tensor:
    """The real 32 px renders of ``emojis`` in ``style`` as ``(N, 3, 32, 32)`` in [0, 1] (cached per process)."""
    arrs = []
    for e in emojis:
        key = (e.codepoint, style)
        if key not in _RENDER_CACHE:
            _RENDER_CACHE[key] = np.asarray(render(e, style, INPUT_SIZE), dtype=np.uint8)
        arrs.append(_RENDER_CACHE[key])
    if not arrs:
        return torch.zeros(0, 3, INPUT_SIZE, INPUT_SIZE)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div(255)


# --------------------------------------------------------------------------- the held-out renders


def _holdout_rank(style: str, codepoint: str) -> bytes:
    return hashlib.sha256(f"indomain-evaluator-holdout:{style}:{codepoint}".encode()).digest()


def evaluator_holdout(world: Sequence[Emoji] | None = None) -> dict[str, list[Emoji]]:
    """The renders evaluator training never sees, per style (each list sorted by codepoint).

    * ``openmoji``: the held-out emoji of ``split_emoji(world, seed=0)`` (the domain protocol's held-out set);
    * ``noto``: ``round(8% * n)`` of the remaining emoji, smallest ``sha256("indomain-evaluator-holdout:noto:{cp}")``;
    * ``twemoji``: as many again, by the ``twemoji`` hash, disjoint from both sets above.

    So every emoji keeps at least two of its three styles in training.
    """
    world = list_emoji() if world is None else list(world)
    _, held = split_emoji(world, seed=DOMAIN_SPLIT_SEED)
    taken = {e.codepoint for e in held}
    out: dict[str, list[Emoji]] = {"openmoji": held}
    n = round(PRIOR_STYLE_HOLDOUT_FRACTION * len(world))
    for style in ("noto", "twemoji"):
        pool = sorted((e for e in world if e.codepoint not in taken), key=lambda e: _holdout_rank(style, e.codepoint))
        chosen = pool[:n]
        taken |= {e.codepoint for e in chosen}
        out[style] = sorted(chosen, key=lambda e: int(e.codepoint, 16))
    return {s: out[s] for s in STYLES}


# --------------------------------------------------------------------------- the evaluators


@dataclass
class _Outputs:
    features: Tensor
    embedding: Tensor
    style_logits: Tensor


class EmojiEvaluators:
    """Controllability and fidelity scores of the emoji world (see the module docstring for the protocol)."""

    def __init__(self, net: EmojiNet, *, path: Path | None = None, metadata: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu", batch_size: int = 64) -> None:
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        self.path = path
        self.metadata = dict(metadata or {})
        self.batch_size = batch_size
        self._world: list[Emoji] | None = None
        self._index: dict[str, int] | None = None
        self._gallery: dict[str, _Outputs] = {}
        self._reference: tuple[Tensor, Tensor] | None = None
        self._reference_radii: dict[int, Tensor] = {}

    # ---- the world
    @property
    def world(self) -> list[Emoji]:
        if self._world is None:
            self._world = list_emoji()
            self._index = {}
            for i, e in enumerate(self._world):
                self._index[e.name] = i
                self._index[e.codepoint] = i
                self._index[e.char] = i
        return self._world

    def emoji_index(self, key: str | Emoji) -> int:
        """Index in :attr:`world` of an emoji given as an `Emoji`, its name (the prompt), codepoint or character."""
        world = self.world
        assert self._index is not None
        if isinstance(key, Emoji):
            key = key.codepoint
        idx = self._index.get(key)
        if idx is None:
            idx = self._index.get(key.replace("\ufe0f", "")) if isinstance(key, str) else None
        if idx is None:
            raise KeyError(
                f"{key!r} is not an emoji of the world ({len(world)} emoji): prompts must be emoji names "
                "such as 'red apple' (see indomain.world.render.list_emoji())"
            )
        return idx

    # ---- raw outputs
    @torch.inference_mode()
    def _run(self, images: ImageInput) -> _Outputs:
        x = to_batch(images)
        if self.net.training:
            self.net.eval()
        feats, embs, logits = [], [], []
        for i in range(0, x.shape[0], self.batch_size):
            f, e, s = self.net(x[i : i + self.batch_size].to(self.device))
            feats.append(f.float().cpu())
            embs.append(e.float().cpu())
            logits.append(s.float().cpu())
        if not feats:
            d, k = self.net.feature_dim, self.net.config["emb_dim"]
            return _Outputs(torch.zeros(0, d), torch.zeros(0, k), torch.zeros(0, len(STYLES)))
        return _Outputs(torch.cat(feats), torch.cat(embs), torch.cat(logits))

    def features(self, images: ImageInput) -> Tensor:
        """``(N, 192)`` pooled trunk features: the space of :meth:`frechet_to_openmoji`."""
        return self._run(images).features

    def embed(self, images: ImageInput) -> Tensor:
        """``(N, 128)`` L2-normalised identity embeddings."""
        return self._run(images).embedding

    def style_probs(self, images: ImageInput) -> Tensor:
        """``(N, 3)`` softmax over :data:`~indomain.world.render.STYLES` (noto, twemoji, openmoji)."""
        return self._run(images).style_logits.softmax(dim=1)

    @property
    def feature_extractor(self) -> EmojiFeatureExtractor:
        """The Fréchet feature space as an ``nn.Module`` for :mod:`indomain.metrics` / ``indomain.evaluate``."""
        return EmojiFeatureExtractor(self.net)

    # ---- controllability
    def gallery(self, style: str) -> Tensor:
        """``(len(world), 128)`` embeddings of the real 32 px renders of every emoji in ``style`` (cached)."""
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
        return self._world_outputs(style).embedding

    def _world_outputs(self, style: str) -> _Outputs:
        # One pass over the real renders of the whole world per style, shared by gallery() and reference_stats().
        if style not in self._gallery:
            self._gallery[style] = self._run(render_batch(self.world, style))
        return self._gallery[style]

    def candidates(self, targets: Sequence[int], k: int = 10, seed: int = 0) -> np.ndarray:
        """``(N, k)`` world indices: column 0 the target, then ``k - 1`` distinct others, one rng draw per row."""
        n = len(self.world)
        if not 2 <= k <= n:
            raise ValueError(f"k must be in [2, {n}], got {k}")
        rng = np.random.default_rng(seed)
        out = np.empty((len(targets), k), dtype=np.int64)
        for row, t in enumerate(targets):
            others = rng.choice(n - 1, size=k - 1, replace=False)
            others[others >= t] += 1
            out[row, 0], out[row, 1:] = t, others
        return out

    def _retrieval_hits_from_embeddings(self, emb: Tensor, targets: Sequence[int], k: int, seed: int,
                                        styles: Sequence[str], reduce: str) -> Tensor:
        if reduce not in ("mean", "max"):
            raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
        if not styles:
            raise ValueError("styles must name at least one style")
        cand = torch.from_numpy(self.candidates(targets, k, seed))
        sims = torch.stack([torch.einsum("nd,nkd->nk", emb, self.gallery(s)[cand]) for s in styles])
        score = sims.mean(0) if reduce == "mean" else sims.amax(0)
        return score[:, 0] > score[:, 1:].amax(1)

    def retrieval_hits(self, images: ImageInput, names: Sequence[str | Emoji], k: int = 10, seed: int = 0,
                       styles: Sequence[str] = STYLES, reduce: str = "mean") -> Tensor:
        """Per-image bool: does the prompted emoji beat ``k - 1`` seeded distractors? See :meth:`retrieval_top1`."""
        targets = [self.emoji_index(n) for n in names]
        emb = self.embed(images)
        if emb.shape[0] != len(targets):
            raise ValueError(f"{emb.shape[0]} images but {len(targets)} names")
        return self._retrieval_hits_from_embeddings(emb, targets, k, seed, styles, reduce)

    def retrieval_top1(self, images: ImageInput, names: Sequence[str | Emoji], k: int = 10, seed: int = 0,
                       styles: Sequence[str] = STYLES, reduce: str = "mean") -> float:
        """Top-1 accuracy of retrieving each image's prompted emoji among ``k`` candidates (chance ``1/k``).

        Candidates: the prompted emoji plus ``k - 1`` others drawn with ``default_rng(seed)`` (one draw per image,
        in order). A candidate's score is the mean (``reduce="mean"``) or max over ``styles`` of the cosine
        similarity between the image's embedding and the embedding of the candidate's real render in that style.
        """
        hits = self.retrieval_hits(images, names, k, seed, styles, reduce)
        return float(hits.float().mean()) if hits.numel() else math.nan

    # ---- fidelity
    def openmoji_share(self, images: ImageInput) -> float:
        """Share of images whose style-head argmax is ``openmoji``."""
        logits = self._run(images).style_logits
        return float((logits.argmax(1) == OPENMOJI).float().mean()) if logits.shape[0] else math.nan

    def reference_features(self, domain: str | Domain = "openmoji") -> Tensor:
        """``(1101, 192)`` features of the reference: the ``domain``'s (or a style's) renders of the ``split_emoji``
        seen emoji (default: OpenMoji, the reference of :meth:`frechet_to_openmoji`)."""
        seen, _ = split_emoji(self.world, seed=DOMAIN_SPLIT_SEED)
        rows = [self.emoji_index(e) for e in seen]
        return self._domain_outputs(domain).features[rows]

    def _domain_outputs(self, domain: str | Domain) -> _Outputs:
        # The whole world in a domain's style, run once per evaluator (an original style: its gallery pass).
        if isinstance(domain, str) and domain in STYLES:
            return self._world_outputs(domain)
        domain = get_domain(domain)
        if domain.name == domain.base:
            return self._world_outputs(domain.base)
        key = f"domain:{domain.name}"
        if key not in self._gallery:
            self._gallery[key] = self._run([domain.render(e, INPUT_SIZE) for e in self.world])
        return self._gallery[key]

    def reference_stats(self) -> tuple[Tensor, Tensor]:
        """Mean and covariance (float64) of :meth:`reference_features`."""
        if self._reference is None:
            self._reference = _stats(self.reference_features())
        return self._reference

    def frechet_to_openmoji(self, images: ImageInput,
                            reference: ImageInput | tuple[Tensor, Tensor] | None = None) -> float:
        """Fréchet distance between the images' features and the reference's (default: :meth:`reference_stats`).

        ``reference`` may also be images or a ``(mu, sigma)`` pair in the same 192-d feature space.
        """
        return self._frechet(self.features(images), reference)

    def _frechet(self, feats: Tensor, reference: Any = None) -> float:
        if feats.shape[0] < 2:
            raise ValueError(f"a Fréchet distance needs at least 2 images, got {feats.shape[0]}")
        if reference is None:
            mu_r, sigma_r = self.reference_stats()
        elif isinstance(reference, tuple) and len(reference) == 2 and all(isinstance(t, Tensor) for t in reference):
            mu_r, sigma_r = reference
        else:
            mu_r, sigma_r = _stats(self.features(reference))
        mu, sigma = _stats(feats)
        return frechet_distance(mu, sigma, mu_r, sigma_r)

    def precision_recall(self, images: ImageInput, reference: ImageInput | None = None, k: int = 3) -> PrecisionRecall:
        """Improved precision and recall (k-NN manifolds) of the images against ``reference`` in the Fréchet space.

        Default reference: :meth:`reference_features`, the same OpenMoji renders as :meth:`frechet_to_openmoji`.
        Precision is the share of images inside the reference's k-NN manifold (other styles, noise, heavy blur fall
        outside it); recall the share of reference images inside the images' manifold (a set of look-alike blobs covers
        almost none of it). Needs more than ``k`` images (``ValueError`` otherwise).
        """
        ref = None if reference is None else self.features(reference)
        return self._precision_recall(self.features(images), ref, k)

    def _precision_recall(self, feats: Tensor, reference: Tensor | None = None, k: int = 3) -> PrecisionRecall:
        if feats.shape[0] <= k:
            raise ValueError(f"precision and recall with k={k} need more than {k} images, got {feats.shape[0]}")
        real, real_radii = self._manifold(reference, k)
        precision = in_manifold(feats, real, real_radii).double().mean().item()
        recall = in_manifold(real, feats, knn_radii(feats, k)).double().mean().item()
        return PrecisionRecall(precision, recall, k, real.shape[0], feats.shape[0])

    def _manifold(self, reference: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
        # The reference's features and k-NN radii; those of the default reference are computed once per k.
        if reference is not None:
            return reference, knn_radii(reference, k)
        if k not in self._reference_radii:
            self._reference_radii[k] = knn_radii(self.reference_features(), k)
        return self.reference_features(), self._reference_radii[k]

    # ---- all at once
    def scorer(self, k: int = 10, seed: int = 0, prompt_to_name: Callable[[str], str] | None = None,
               pr_k: int = 3, domain: str | Domain = "openmoji") -> Scorer:
        """A scorer for ``indomain.evaluate``: ``scorer(images, prompts)`` returns

        * ``control_top1``: :meth:`retrieval_top1` over the images whose prompt is not None (NaN if none is); a
          prompt must be an emoji name (``prompt_to_name`` maps other prompt formats to names);
        * ``fd_openmoji``: :meth:`frechet_to_openmoji` (NaN for fewer than 2 images);
        * ``openmoji_share``: :meth:`openmoji_share`;
        * ``precision_openmoji``, ``recall_openmoji``: :meth:`precision_recall` with ``k = pr_k`` (NaN for ``pr_k``
          images or fewer).

        The images are run through the network once.

        With another ``domain`` (:mod:`indomain.world.domains`), the fidelity columns are ``fd_<domain>``,
        ``precision_<domain>`` and ``recall_<domain>`` against that domain's renders of the seen emoji, there is no
        style share (the style head knows only the three original styles), and ``control_domain_top1`` adds
        retrieval against a gallery of the domain's own renders of every emoji (for a style the shipped galleries
        rate poorly even for real images).
        """
        domain = get_domain(domain)
        if domain.name != "openmoji":
            return self._domain_scorer(domain, k, seed, prompt_to_name, pr_k)

        def emoji_evaluators(images: list[PIL.Image.Image], prompts: list[str | None]) -> dict[str, float]:
            if len(images) != len(prompts):
                raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
            out = self._run(images)
            rows = [i for i, p in enumerate(prompts) if p is not None]
            control = math.nan
            if rows:
                names = [prompt_to_name(prompts[i]) if prompt_to_name else prompts[i] for i in rows]
                targets = [self.emoji_index(n) for n in names]  # type: ignore[arg-type]
                hits = self._retrieval_hits_from_embeddings(out.embedding[rows], targets, k, seed, STYLES, "mean")
                control = float(hits.float().mean())
            n = out.features.shape[0]
            pr = self._precision_recall(out.features, k=pr_k) if n > pr_k else None
            return {
                "control_top1": control,
                "fd_openmoji": self._frechet(out.features) if n >= 2 else math.nan,
                "openmoji_share": float((out.style_logits.argmax(1) == OPENMOJI).float().mean()) if n else math.nan,
                "precision_openmoji": pr.precision if pr else math.nan,
                "recall_openmoji": pr.recall if pr else math.nan,
            }

        return emoji_evaluators

    def _domain_scorer(self, domain: Domain, k: int, seed: int, prompt_to_name: Callable[[str], str] | None,
                       pr_k: int) -> Scorer:
        reference = self.reference_features(domain)
        stats, radii = _stats(reference), knn_radii(reference, pr_k)
        gallery = self._domain_outputs(domain).embedding

        def domain_evaluators(images: list[PIL.Image.Image], prompts: list[str | None]) -> dict[str, float]:
            if len(images) != len(prompts):
                raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
            out = self._run(images)
            rows = [i for i, p in enumerate(prompts) if p is not None]
            control = control_domain = math.nan
            if rows:
                names = [prompt_to_name(prompts[i]) if prompt_to_name else prompts[i] for i in rows]
                targets = [self.emoji_index(n) for n in names]  # type: ignore[arg-type]
                emb = out.embedding[rows]
                control = float(self._retrieval_hits_from_embeddings(emb, targets, k, seed, STYLES, "mean")
                                .float().mean())
                cand = torch.from_numpy(self.candidates(targets, k, seed))
                sims = torch.einsum("nd,nkd->nk", emb, gallery[cand])
                control_domain = float((sims[:, 0] > sims[:, 1:].amax(1)).float().mean())
            n = out.features.shape[0]
            precision = recall = math.nan
            if n > pr_k:
                precision = in_manifold(out.features, reference, radii).double().mean().item()
                recall = in_manifold(reference, out.features, knn_radii(out.features, pr_k)).double().mean().item()
            return {
                "control_top1": control,
                "control_domain_top1": control_domain,
                f"fd_{domain.name}": self._frechet(out.features, stats) if n >= 2 else math.nan,
                f"precision_{domain.name}": precision,
                f"recall_{domain.name}": recall,
            }

        return domain_evaluators


def _stats(feats: Tensor) -> tuple[Tensor, Tensor]:
    f = feats.double()
    return f.mean(0), torch.cov(f.T)


# --------------------------------------------------------------------------- loading


def _resolve_weights(path: str | os.PathLike | None) -> Path:
    p = default_evaluator_dir() if path is None else Path(path)
    return p / WEIGHTS_FILENAME if p.is_dir() or p.suffix != ".safetensors" else p


def load_evaluators(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> EmojiEvaluators:
    """Load the evaluators from ``path`` (a folder holding ``evaluators.safetensors``, or that file).

    Default: the weights shipped in the ``indomain-emoji`` package (``indomain_emoji/evaluators/``). Raises
    :class:`~indomain.metrics.MissingWeightsError` (a ``FileNotFoundError``) naming the command that trains them.
    """
    from safetensors import safe_open

    file = _resolve_weights(path)
    if not file.is_file():
        raise MissingWeightsError(
            f"emoji-world evaluator weights not found at {file}. Train them (about 10 minutes on one CPU core) with\n"
            f"  {train_command(None if path is None else file.parent)}\n"
            "(in Python: indomain.world.evaluator_training.train_evaluators(out_dir)), which also writes the model "
            "card card.json."
        )
    with safe_open(str(file), framework="pt") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta.get("config", "{}"))
    net = EmojiNet(**config)
    net.load_state_dict(state, strict=True)
    return EmojiEvaluators(net, path=file, metadata=meta, device=device)
