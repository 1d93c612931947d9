"""`indomain world benchmark`: the paper's central comparison, in the emoji world.

    indomain world benchmark --prior PRIOR --out outputs/benchmark      # the protocol: N = 96 x 2 seeds, weight grid

Given the emoji prior (trained on Noto + Twemoji, prompted by emoji names) and the domain (OpenMoji renders of
the *seen* emoji, images only), it trains and compares:

1. ``prior``: the prior alone, prompted ("red apple"), over w_c (the reference point w_d = 0);
2. ``finetune-cfg`` / ``finetune-lora-cfg``: conventional fine-tuning of the prior's text UNet on the domain images
   with a fixed domain caption, then CFG with prompts "<caption>, <name>" (full and LoRA), over their CFG scale;
3. ``rectified``: the same full fine-tune with the unconditional prediction taken from the prior (Domain Guidance),
   over its scale;
4. ``ours``: the null-text domain model with guidance-decoupled sampling, over w_d x w_c (at w_d = 0 it is the
   prior, the same images, so those points are the prior's rows and are not generated twice).
5. ``ours-dt``: the same domain model with the ``domain-text`` guidance form (the control term from the
   domain model with the prior's cross-attention put back), over the same w_d x w_c (``--guidance-forms``).

Every method is scored on prompts of *seen* emoji and of *held-out* emoji (never in domain training) with the
project's emoji evaluators: ``control_top1`` (is it the prompted emoji: top-1 among 10 candidates),
``openmoji_share`` (share judged OpenMoji style), ``fd_openmoji`` (Fréchet distance to real OpenMoji renders
in the evaluator's feature space) and ``precision_openmoji`` / ``recall_openmoji`` (k-NN precision and recall in that
space; which of these to trust for what: the evaluators' card, ``indomain world evaluator-sanity``).

The protocol, so that the numbers survive noise: each sampling seed in ``--seeds`` is a full evaluation of every
setting (``eval-<split>-seed<s>/``, one `indomain.evaluate` report each; image i of seed s uses the generator seed
``s * 1,000,000 + i``). Per (method, w_d, w_c), RESULTS.md gives the mean over seeds of each score, the binomial
standard error ``sqrt(p (1 - p) / N)`` of each share (N = images per setting x seeds) and the range over seeds of
each set statistic (FD, precision, recall: per seed at N images). The real OpenMoji renders of the same prompts'
emoji, scored the same way at the same N, are the reference row. One trade-off plot per prompt split
(``tradeoff-<split>.png``: control against FD, error bars, the Pareto front) sits next to RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..evaluate import OURS_METHODS
from ..numerics import is_finite_number
from ..outputs import to_json
from ..cliargs import add_options, finite_float, from_args, nonnegative_int, option, positive_float, positive_int

DOMAIN_CAPTION = "openmoji style"  # the caption of the openmoji domain (indomain.world.domains), for the demo
SEED_STRIDE = 1_000_000  # image i of sampling seed s uses the generator seed s * SEED_STRIDE + i: seeds share none
PROTOCOL_IMAGES, PROTOCOL_SEEDS = 96, 2  # below either, RESULTS.md calls the run a smoke run
#: prompts per set (seen, held-out), evenly spaced over the split: the held-out set the protocol scores, which
#: `tune --scorer emoji` never probes on
PROTOCOL_PROMPTS = 96
SHARE_COLUMNS = ("control_top1", "control_domain_top1", "openmoji_share")  # shares of images: binomial SE
REAL = "real renders"  # the reference row: real renders of the prompts' emoji in the domain's style
ROUND_TRIP = "VAE round trip"  # the real renders through the prior's VAE: the ceiling of any generated image


def spread_columns(domain: str = "openmoji") -> tuple[str, ...]:
    """The set statistics of a domain's scores (range over seeds): its FD, precision and recall."""
    return (f"fd_{domain}", f"precision_{domain}", f"recall_{domain}")
_KEYS = ("method", "w_d", "w_c", "setting", "n_generated", "images")  # evaluate's row columns that are not scores


@dataclass
class BenchmarkConfig:
    """Every setting of `indomain world benchmark` (each field is also its option ``--field-name``)."""

    prior: str = option(help="the emoji prior pipeline folder")
    out: str = option(help="output folder (models, reports, RESULTS.md, trade-off plots)")
    domain: str = option("openmoji", "the target domain (indomain.world.domains): openmoji, the original, or a style "
                         "derived from the world that the method was never tuned on: sepia (Twemoji tinted sepia), "
                         "sticker (Noto at 5/8 size on white)", choices=("openmoji", "sepia", "sticker"))
    resolution: int = option(32, "image size in pixels of the domain renders and of training (the emoji prior's size)",
                             type=positive_int)
    train_steps: int = option(400, "training steps per model: the domain model and each baseline", type=positive_int)
    train_batch_size: int = option(16, "training batch size", type=positive_int)
    learning_rate: float = option(1e-4, "learning rate of the full-weight models; the LoRA baseline uses 10x",
                                  type=positive_float)
    lora_rank: int = option(8, "LoRA rank of the LoRA baseline", type=positive_int)
    num_domain_images: int | None = option(None, "domain images (default: every seen emoji)", type=positive_int)
    num_prompts: int = option(PROTOCOL_PROMPTS, "prompts per set (seen and held-out), evenly spaced over the split; image i uses "
                              "prompt i mod P", type=positive_int)
    images_per_setting: int = option(PROTOCOL_IMAGES, "images per scored setting and seed (the N of FD, precision and "
                                     "recall)", type=positive_int)
    seeds: list[int] = option([0, 1], "sampling seeds: each is a full evaluation of every setting (shares pool the "
                              "seeds' images; FD, precision and recall show the range over seeds)",
                              type=nonnegative_int)
    sample_steps: int = option(20, "sampler steps", type=positive_int)
    domain_guidance_scales: list[float] = option([0.0, 1.0, 2.5, 4.0], "w_d sweep of ours (w_d = 0 is the prior)",
                                                 type=finite_float, nargs="*", aliases=["--domain-scales"])
    guidance_scales: list[float] = option([1.5, 2.5, 5.0], "w_c sweep of ours and of the prior", type=finite_float,
                                          nargs="*")
    baseline_scales: list[float] = option([1.5, 2.5, 5.0, 7.5], "scale sweep of the fine-tunes (their CFG w_c) and of "
                                          "rectified (its w_d)", type=finite_float, nargs="*")
    guidance_forms: list[str] = option(["decoupled", "domain-text"], "the guidance forms of ours, each a method over the "
                                       "same w_d x w_c grid: decoupled (the paper's Eq. A, method `ours`) and "
                                       "domain-text (the control term from the domain model with the prior's "
                                       "cross-attention put back, method `ours-dt`); also domain-text-bands (method "
                                       "`ours-bands`)", nargs="*", choices=tuple(OURS_METHODS))
    seed: int = option(0, "seed of the training runs (sampling: --seeds; the seen/held-out split is the "
                       "evaluators' fixed one)")
    overwrite: bool = option(False, "start over in --out, replacing an earlier benchmark or demo (default: continue "
                             "an earlier run there)")

    @classmethod
    def demo(cls, prior: str, out: str, **changes: Any) -> BenchmarkConfig:
        """The `indomain demo` preset, a smoke run: shorter training, fewer images, one seed, one weight per method."""
        preset = dict(train_steps=300, num_prompts=12, images_per_setting=24, seeds=[0],
                      domain_guidance_scales=[0.0, 2.5, 4.0], guidance_scales=[2.5], baseline_scales=[2.5])
        return cls(prior=prior, out=out, **(preset | changes))

    @property
    def smoke(self) -> bool:
        """Fewer images or seeds than the protocol: the numbers show that the run works, not which method wins."""
        return self.images_per_setting < PROTOCOL_IMAGES or len(set(self.seeds)) < PROTOCOL_SEEDS


@dataclass
class SplitResult:
    """One prompt split's outcome: the rows over seeds (the real renders first), the Pareto front, plot and reports."""

    rows: list[dict[str, Any]]
    front: list[int] = field(default_factory=list)  # indices into rows
    plot: Path | None = None
    reports: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Statistics over seeds, the Pareto front (pure functions)
# ----------------------------------------------------------------------------------------------------------------


def aggregate_seeds(rows_per_seed: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (method, w_d, w_c) from each seed's evaluation rows, in first-seen order.

    Every score becomes its mean over the seeds. A share (:data:`SHARE_COLUMNS`) gains ``<col>_se``, the binomial
    standard error ``sqrt(p (1 - p) / N)`` with N the images of all seeds (the sum of ``n_generated``); any other
    score (FD, precision, recall: statistics of a whole image set) gains ``<col>_min`` / ``<col>_max``, its range
    over the seeds. ``seeds`` and ``n`` say how many seeds and images a row pools.
    """
    groups: dict[tuple[Any, Any, Any], list[dict[str, Any]]] = {}
    for rows in rows_per_seed:
        for row in rows:
            groups.setdefault((row["method"], row["w_d"], row["w_c"]), []).append(row)
    out = []
    for (method, w_d, w_c), rows in groups.items():
        n = sum(int(r["n_generated"]) for r in rows)
        agg: dict[str, Any] = {"method": method, "w_d": w_d, "w_c": w_c, "seeds": len(rows), "n": n}
        scores = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in _KEYS
                  and all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) for r in rows)]
        for column in scores:
            values = [float(r[column]) for r in rows]
            mean = sum(values) / len(values)
            agg[column] = mean
            if column in SHARE_COLUMNS:
                agg[f"{column}_se"] = math.sqrt(mean * (1 - mean) / n) if math.isfinite(mean) else math.nan
            else:
                finite = all(math.isfinite(v) for v in values)
                agg[f"{column}_min"] = min(values) if finite else math.nan
                agg[f"{column}_max"] = max(values) if finite else math.nan
        out.append(agg)
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(control, fd)`` points: no other point has control >= and FD <= with one of
    them strict (higher control and lower FD are better). Points with a non-finite coordinate are never on it."""
    ok = [i for i, (c, d) in enumerate(points) if math.isfinite(c) and math.isfinite(d)]

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])

    return [i for i in ok if not any(dominates(points[j], points[i]) for j in ok if j != i)]


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def render_domain(out: Path, resolution: int, limit: int | None,
                  domain: str = "openmoji") -> tuple[Path, list[str], list[str]]:
    """The domain's renders of the seen emoji (the only domain data) plus the seen and held-out prompt names.

    The split is always the evaluators' (``split_emoji(seed=DOMAIN_SPLIT_SEED)``): their FD reference is the seen
    emoji and their held-out renders are the held-out ones, so another split would score against its own prompts."""
    from .domains import get_domain
    from .evaluators import DOMAIN_SPLIT_SEED
    from .render import evenly_spaced, list_emoji, split_emoji

    seen, held_out = split_emoji(list_emoji(), seed=DOMAIN_SPLIT_SEED)
    folder = out / "domain_images"
    folder.mkdir(parents=True, exist_ok=True)
    chosen = evenly_spaced(seen, limit)
    for emoji in chosen:
        path = folder / f"{emoji.codepoint}.png"
        if not path.exists():
            get_domain(domain).render(emoji, resolution).save(path)
    return folder, [e.name for e in seen], [e.name for e in held_out]


def score_real_renders(prompts: Sequence[str], n: int, resolution: int, scorer: Any, domain: str = "openmoji",
                       vae: str | None = None) -> dict[str, Any]:
    """The reference row: image i is the domain's render of prompt ``i mod P``'s emoji (the images a generator is
    asked for), scored by ``scorer`` like a setting of N = ``n`` images. Renders are deterministic: one seed.

    With ``vae`` (an AutoencoderKL folder), the renders go through its encoder (the latent mode) and decoder first:
    the :data:`ROUND_TRIP` row, the best any image decoded by that VAE can score."""
    from .domains import get_domain
    from .render import list_emoji

    by_name = {e.name: e for e in list_emoji()}
    renders = {name: get_domain(domain).render(by_name[name], resolution) for name in dict.fromkeys(prompts)}
    names = [prompts[i % len(prompts)] for i in range(n)]
    images = [renders[name] for name in names]
    if vae is not None:
        from .prior import vae_round_trip_images

        images = vae_round_trip_images(images, vae)
    values = scorer(images, names)
    return {"method": REAL if vae is None else ROUND_TRIP, "w_d": None, "w_c": None, "n_generated": n,
            **{k: float(v) for k, v in values.items()}}


def benchmark_methods(config: BenchmarkConfig, ours: Any, finetune: Any, lora: Any) -> list[Any]:
    """The compared methods and each one's weights: the prior over w_c; the fine-tunes and rectified over their scale;
    ours over w_d x w_c without w_d = 0 (that is the prior: the same images)."""
    from ..evaluate import Method
    from .domains import get_domain

    template = get_domain(config.domain).caption + ", {}"
    scales = config.baseline_scales
    methods = [
        Method("prior", config.prior, domain_guidance_scales=[0.0], guidance_scales=config.guidance_scales),
        Method("finetune-cfg", config.prior, unet=finetune, prompt_template=template, domain_guidance_scales=[0.0],
               guidance_scales=scales),
        Method("finetune-lora-cfg", config.prior, unet=lora, prompt_template=template, domain_guidance_scales=[0.0],
               guidance_scales=scales),
        Method("rectified", config.prior, domain=finetune, prompt_template=template, guidance_scales=[0.0],
               domain_guidance_scales=scales),
    ]
    ours_scales = [w for w in config.domain_guidance_scales if w != 0]
    for form in config.guidance_forms if ours_scales else []:
        methods.append(Method(OURS_METHODS[form], config.prior, domain=ours, domain_guidance_scales=ours_scales,
                              guidance_scales=config.guidance_scales, guidance_form=form))
    return methods


def run_benchmark(config: BenchmarkConfig, scorer: Any = None) -> Path:
    """Train every method, evaluate them on seen and held-out prompts once per seed, write RESULTS.md and the plots."""
    from ..outputs import claim_output_dir, close_run

    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {config.seeds}")
    start = time.time()
    out = claim_output_dir(config.out, "world benchmark", overwrite=config.overwrite, reuse=not config.overwrite,
                           inputs={"--prior": config.prior})  # a rerun continues: trained models are kept
    try:
        return _run_benchmark(config, scorer, out, start)
    finally:
        close_run(out)


def _run_benchmark(config: BenchmarkConfig, scorer: Any, out: Path, start: float) -> Path:
    from ..evaluate import EvalConfig, Sweep, evaluate
    from ..train import TrainConfig, learning_rate_for, train
    from .domains import get_domain
    from .render import evenly_spaced

    domain, seen, held_out = render_domain(out, config.resolution, config.num_domain_images, config.domain)
    caption = get_domain(config.domain).caption
    fd = spread_columns(config.domain)[0]

    def fit(name: str, **kw: Any) -> Path:
        folder = out / name
        if not (folder / "config.json").is_file():
            settings = dict(prior=config.prior, images=str(domain), output=str(folder), resolution=config.resolution,
                            train_batch_size=config.train_batch_size, max_train_steps=config.train_steps,
                            learning_rate=config.learning_rate, ema_decay=0.99, checkpointing_steps=config.train_steps,
                            checkpoints_total_limit=1, seed=config.seed, overwrite=True,
                            latent_cache=str(out / "latent_cache"))  # one cache for every model: same images
            train(TrainConfig(**(settings | kw)))
        return folder

    ours = fit("ours")
    finetune = fit("finetune", baseline=True, caption=caption)
    lora = fit("finetune-lora", baseline=True, caption=caption, lora_rank=config.lora_rank,
               learning_rate=learning_rate_for(lora=True, full_weights_rate=config.learning_rate))
    methods = benchmark_methods(config, ours, finetune, lora)
    sweep = Sweep()  # unused: every method names its own weights
    results = {}
    for split, names in (("seen", seen), ("held-out", held_out)):
        prompts = evenly_spaced(names, config.num_prompts)
        evaluations = []
        for s in config.seeds:
            eval_config = EvalConfig(out=out / f"eval-{split}-seed{s}", num_images=config.images_per_setting,
                                     prompts=prompts, seed=s * SEED_STRIDE, scheduler="dpm++",
                                     steps=config.sample_steps, batch_size=16, metrics=(),
                                     plot_x="control_top1" if scorer else None,
                                     plot_y=fd if scorer else None, overwrite=True)
            evaluations.append(evaluate(methods, sweep, eval_config, scorer=scorer, desc=f"{split}, seed {s}"))
        rows = aggregate_seeds([e.rows for e in evaluations])
        if scorer is not None:
            references = [score_real_renders(prompts, config.images_per_setting, config.resolution, scorer,
                                             config.domain, vae) for vae in (None, str(Path(config.prior) / "vae"))]
            rows = aggregate_seeds([references]) + rows
        settings = [i for i, row in enumerate(rows) if row["method"] not in (REAL, ROUND_TRIP)]  # references
        points = [(rows[i].get("control_top1", math.nan), rows[i].get(fd, math.nan)) for i in settings]
        front = [settings[j] for j in pareto_front(points)]
        plot = plot_tradeoff(rows, front, out / f"tradeoff-{split}.png", f"{split} prompts", fd)
        results[split] = SplitResult(rows, front, plot, [e.out / "report.html" for e in evaluations])
    write_results(out, config, results, time.time() - start)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The trade-off plot and RESULTS.md
# ----------------------------------------------------------------------------------------------------------------


def plot_tradeoff(rows: Sequence[dict[str, Any]], front: Sequence[int], path: Path, title: str,
                  fd: str = "fd_openmoji") -> Path | None:
    """Control (``control_top1``, error bar: its SE) against fidelity (``fd``, lower is better, error bar: the range
    over seeds), one line per method (ours: one per w_c, from the prior's point along w_d), the prior, the real renders
    and their VAE round trip as reference points, the Pareto front ``front`` (indices into ``rows``) ringed and joined.
    Returns None (writes nothing) without both columns."""
    from ..report import label_weights, new_plot, save_plot

    x, y = "control_top1", fd
    shown = [r for r in rows if is_finite_number(r.get(x)) and is_finite_number(r.get(y))]
    if not shown:
        return None
    fig, ax = new_plot((7.5, 5.6))

    def draw(points: list[dict[str, Any]], label: str, labels: bool = True, **style: Any) -> None:
        xerr = [r.get(f"{x}_se", 0.0) for r in points]
        yerr = [[r[y] - r.get(f"{y}_min", r[y]) for r in points], [r.get(f"{y}_max", r[y]) - r[y] for r in points]]
        ax.errorbar([r[x] for r in points], [r[y] for r in points], xerr=xerr, yerr=yerr, capsize=2, elinewidth=0.8,
                    label=label, **style)
        if labels:
            label_weights(ax, points, x, y, fontsize=6)

    prior = {r["w_c"]: r for r in shown if r["method"] == "prior"}
    colours = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"])
    for method in dict.fromkeys(r["method"] for r in shown if r["method"] not in ("prior", REAL, ROUND_TRIP)):
        points = sorted((r for r in shown if r["method"] == method), key=lambda r: (r["w_c"], r["w_d"]))
        colour = {"ours": "tab:red", "ours-dt": "tab:cyan", "ours-bands": "tab:purple"}.get(method) or next(colours, "tab:gray")
        if method not in OURS_METHODS.values():  # a baseline: one line along its scale
            draw(points, method, color=colour, marker="o", linewidth=1, markersize=4)
            continue
        for k, w_c in enumerate(dict.fromkeys(r["w_c"] for r in points)):  # ours: one line per w_c along w_d
            line = [prior[w_c]] if w_c in prior else []
            draw(line + [r for r in points if r["w_c"] == w_c], f"{method}, w_c = {w_c:g} (along w_d)", color=colour,
                 marker="osD^v"[k % 5], linestyle=["-", "--", ":", "-."][k % 4], linewidth=1.2, markersize=4)
    if prior:
        draw(sorted(prior.values(), key=lambda r: r["w_c"]), "prior (w_d = 0)", color="black", marker="s",
             linestyle="none", markersize=6)
    for method, label, marker in ((REAL, "real renders", "*"), (ROUND_TRIP, "real renders, VAE round trip", "P")):
        real = [r for r in shown if r["method"] == method]
        if real:
            draw(real, label, labels=False, color="gold", marker=marker, markersize=14 if marker == "*" else 10,
                 markeredgecolor="black", linestyle="none")
    on_front = sorted((rows[i] for i in front if is_finite_number(rows[i].get(x)) and is_finite_number(rows[i].get(y))),
                      key=lambda r: r[x])
    if on_front:
        ax.plot([r[x] for r in on_front], [r[y] for r in on_front], color="gray", linestyle="--", linewidth=0.8,
                zorder=0)
        ax.scatter([r[x] for r in on_front], [r[y] for r in on_front], s=160, facecolors="none", edgecolors="gray",
                   linewidths=1.2, label="Pareto front (not dominated)")
    generated = next((r for r in shown if r["method"] not in (REAL, ROUND_TRIP)), shown[0])
    n, seeds = generated.get("n", 0), generated.get("seeds", 1)
    per_seed = f"{n // seeds} images × {seeds} seed{'s' * (seeds != 1)}"
    return save_plot(fig, ax, path, xlabel="control: control_top1 (higher is better; bars: binomial SE)",
                     ylabel=f"fidelity: {fd} (lower is better; bars: seed range)",
                     title=f"{title}: N = {per_seed} per point; points labelled w_d/w_c", legend_size=7)


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    digits = 2 if column.startswith("fd") else 3
    if not math.isfinite(value):
        return str(value)
    if column in ("w_d", "w_c"):
        return f"{value:g}"
    if f"{column}_se" in row:
        return f"{value:.3f} ± {row[f'{column}_se']:.3f}"
    if row.get("seeds", 1) > 1 and is_finite_number(row.get(f"{column}_min")):
        return f"{value:.{digits}f} ({row[f'{column}_min']:.{digits}f}–{row[f'{column}_max']:.{digits}f})"
    return f"{value:.{digits}f}"


def fd_reference(domain: str = "openmoji") -> str:
    """The evaluators' FD reference set, in words (it is fixed: the FD of every row is against the same images)."""
    from .domains import get_domain
    from .evaluators import DOMAIN_SPLIT_SEED
    from .render import list_emoji, split_emoji

    seen, _ = split_emoji(list_emoji(), seed=DOMAIN_SPLIT_SEED)
    return (f"{get_domain(domain).description}: the renders of the {len(seen):,} seen emoji "
            f"(`split_emoji(seed={DOMAIN_SPLIT_SEED})`, the domain training set), in the emoji evaluators' 192-d "
            "feature space (`EmojiEvaluators.reference_features`)")


def full_command(config: BenchmarkConfig) -> str:
    """The protocol run's command line (the defaults: N = 96 per setting and seed, 2 seeds, the weight grid)."""
    if config.domain == "openmoji":
        return f"indomain world benchmark --prior {config.prior} --out outputs/benchmark"
    return f"indomain world benchmark --prior {config.prior} --domain {config.domain} --out outputs/benchmark-{config.domain}"


def write_results(out: Path, config: BenchmarkConfig, results: dict[str, SplitResult], seconds: float) -> Path:
    """RESULTS.md (one table and trade-off plot per prompt set, with N, seeds, the FD reference and the command) and
    results.json (the same rows)."""
    import sys

    seeds = ", ".join(str(s) for s in config.seeds)
    n = config.images_per_setting
    fd = spread_columns(config.domain)[0]
    lines = [f"# Emoji world ({config.domain}): fine-tuning vs guidance-decoupled prior preservation", ""]
    if config.smoke:
        lines += [f"**Smoke run.** N = {n} images per setting and {len(config.seeds)} seed(s), "
                  f"{config.train_steps} training steps: these numbers show that the pipeline runs end to end, not "
                  f"which method is better (a share at N = {n} has a standard error of up to "
                  f"±{0.5 / math.sqrt(n * len(config.seeds)):.2f}, and FD depends on N, so it cannot be compared with "
                  f"FD at N = {PROTOCOL_IMAGES}). The full benchmark (N = {PROTOCOL_IMAGES} per setting and seed, "
                  f"{PROTOCOL_SEEDS} seeds, the weight grid: about an hour on one CPU core) is "
                  f"`{full_command(config)}`; the project's full tables are in docs/RESULTS.md.", ""]
    lines += [f"Command: `{' '.join(sys.argv)}`", "", f"Settings: `{to_json(asdict(config))}`", "",
              f"Wall time: {seconds / 60:.1f} min.", "",
              f"Protocol: N = {n} images per setting and seed, seeds {seeds} (image i of seed s uses the generator "
              f"seed s × {SEED_STRIDE:,} + i); {config.num_prompts} prompts per split, image i prompted with prompt "
              f"i mod {config.num_prompts}. Shares (control_top1, ...) pool the seeds: mean ± binomial "
              f"standard error sqrt(p(1 − p)/N), N = {n} × {len(config.seeds)} = {n * len(config.seeds)}. FD, "
              f"precision and recall are computed per seed at N = {n}: mean over seeds (min–max)."]
    if any(fd in r for result in results.values() for r in result.rows):
        lines += ["", f"FD reference: {fd_reference(config.domain)}. FD values are comparable only at the same N (real "
                  f"renders score much lower FD at larger N). The `{REAL}` row: the real renders of the same prompts' "
                  f"emoji in the domain's style, scored the same way at N = {n} (deterministic: one seed); the "
                  f"`{ROUND_TRIP}` row: the same renders through the prior's VAE, the best a generated image can do. "
                  "For seen prompts the renders are part of the FD reference set itself, so their rows there are a "
                  "floor, not a method. `control_domain_top1` (derived domains only) retrieves against a gallery of "
                  "the domain's own renders: trivially 1 for the real renders, so read it on the round trip."]
    lines += ["", "Ours at w_d = 0 is the prior (the same images): its w_d = 0 points are the prior's rows. "
              "● marks the Pareto front: no other setting is at least as good on both control_top1 (higher) and "
              f"{fd} (lower) and better on one.", ""]
    for split, result in results.items():
        rows = result.rows
        scores = [c for c in ("control_top1", "control_domain_top1", "openmoji_share", *spread_columns(config.domain))
                  if any(c in r for r in rows)]
        scores += [c for c in dict.fromkeys(k for r in rows for k in r)
                   if c not in scores and c not in ("method", "w_d", "w_c", "seeds", "n")
                   and not c.endswith(("_se", "_min", "_max"))]  # a stand-in scorer's columns
        cols = ["method", "w_d", "w_c", "N", *scores, "front"]
        lines += [f"## {split} prompts", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for i, row in enumerate(rows):
            cells = [_cell(row, c) for c in ("method", "w_d", "w_c")] + [str(row["n"])]
            cells += [_cell(row, c) for c in scores] + ["●" if i in result.front else ""]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if result.plot is not None:
            lines += [f"![trade-off, {split} prompts]({result.plot.name})", ""]
        lines += ["Reports (one per seed): " + ", ".join(f"`{p.relative_to(out)}`" for p in result.reports), ""]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    record = {"config": asdict(config), "seconds": seconds, "smoke": config.smoke,
              "splits": {split: {"rows": r.rows, "pareto_front": [r.rows[i] for i in r.front],
                                 "plot": None if r.plot is None else r.plot.name,
                                 "reports": [str(p.relative_to(out)) for p in r.reports]}
                         for split, r in results.items()}}
    (out / "results.json").write_text(to_json(record, indent=2) + "\n")
    return path


@dataclass
class BenchmarkCommand:
    """The flag of `indomain world benchmark` beside its `BenchmarkConfig`: which scorer the run gets."""

    no_evaluators: bool = option(False, "skip the emoji evaluators (smoke runs)")


def add_parser(wsub: argparse._SubParsersAction) -> None:
    p = wsub.add_parser("benchmark", help="compare prior, fine-tuning (CFG, LoRA, rectified) and ours in the emoji world",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, BenchmarkConfig)
    add_options(p, BenchmarkCommand)
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from ..console import info

    scorer = None
    if not from_args(BenchmarkCommand, args).no_evaluators:
        from .evaluators import load_evaluators

        scorer = load_evaluators().scorer(k=10, domain=args.domain)
    out = run_benchmark(from_args(BenchmarkConfig, args), scorer)
    info((out / "RESULTS.md").read_text())  # the tables with N, seeds and the FD reference
    print(f"results: {out / 'RESULTS.md'}")
    return 0
