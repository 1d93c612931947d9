"""`indomain ui`: a web page (gradio) to generate, train, edit and read results in a browser.

A thin layer over the command line's own functions: Generate loads its pipeline with `indomain generate`'s
`_open_pipeline` (same checks, same claimed output folder, same settings.json) and makes the same pipeline call,
with a per-step callback for the progress bar and Stop; Edit runs `indomain edit`; Train starts `indomain train`
in a background process (`uijobs`). An input error shows the ``error:`` line the command line would print.
Every path typed into the page stays inside ``--data-root`` (`uipaths.confine`). gradio is imported only here,
inside functions, so ``import indomain`` and ``indomain --help`` never load it.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import ipaddress
import os
import sys
import threading
import time
import traceback
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TYPE_CHECKING

from .cliargs import add_options, from_args, option, positive_int

if TYPE_CHECKING:
    from .generate import GenerateConfig

SHIPPED_PRIOR = "emoji prior (shipped)"
GRID_W_D = (0.0, 1.0, 2.5, 4.0)  # the weight grid's columns
GRID_W_C = (0.0, 2.5, 5.0)  # and rows


@dataclasses.dataclass
class UIConfig:
    """Every setting of `indomain ui` (each field is also its option), as typed; `ui_setup` resolves it."""

    # the command's one line in `indomain --help` (cli.COMMANDS derives it from here)
    command_help: ClassVar[str] = "open a web page to generate, train, edit and compare results in a browser (gradio)"

    prior: str | None = option(None, "prior pipeline folder (default: the shipped emoji prior, which needs nothing "
                               "downloaded)")
    domain: list[str] | None = option(None, "domain model folder offered in the page; repeatable (default: "
                                      "outputs/demo/ours when `make demo` made it)", action="append", metavar="DIR")
    controlnet: str | None = option(None, "a ControlNet for the prior: the Generate tab then takes a control image",
                                    metavar="DIR")
    host: str = option("127.0.0.1", "address to bind (default: %(default)s, this machine only)")
    port: int = option(7860, "port", type=positive_int)
    data_root: str = option(".", "paths typed in the page must lie inside this folder (default: the current folder)")
    out: str = option("outputs/ui", "where the page writes its runs, relative to --data-root and inside it")
    device: str = option("auto", "torch device for Generate and Edit")


@dataclasses.dataclass
class UISetup:
    """What the page works with: a `UIConfig` with its paths resolved and the models it offers named."""

    priors: dict[str, str]  # name shown -> folder (the operator's --prior, else the shipped emoji prior)
    domains: dict[str, str]  # name shown -> folder (--domain, or the `make demo` model when present)
    data_root: Path
    out_root: Path
    device: str = "auto"
    controlnet: str | None = None
    resolution: int = 32  # the Train tab's default


def host_warning(host: str) -> str | None:
    """A warning for a bind address other than loopback: the page reads and writes files under the data root."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (f"warning: --host {host} serves the page to other machines: anyone who reaches port it can generate, "
            "train and read the files under --data-root; use 127.0.0.1 unless you trust the network")


# ----------------------------------------------------------------------------------------------------
# The command line


def add_parser(sub: argparse._SubParsersAction, help: str) -> None:
    p = sub.add_parser("ui", help=help, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, UIConfig)
    p.set_defaults(func=cmd_ui)


def ui_setup(config: UIConfig) -> UISetup:
    """Resolve the command's options; an output folder outside the data root is refused."""
    from .uipaths import confine

    root = Path(config.data_root).resolve()
    if not root.is_dir():
        raise ValueError(f"--data-root {config.data_root!r} is not a folder")
    out_root = confine(str(config.out), root, "--out")
    if config.prior:
        priors = {config.prior: config.prior}
    else:
        from .world.prior import emoji_prior_dir

        priors = {SHIPPED_PRIOR: str(emoji_prior_dir())}
    demo = Path("outputs/demo/ours")
    domains = {d: d for d in config.domain} if config.domain else (
        {"make demo's domain model (outputs/demo/ours)": str(demo.resolve())} if (demo / "config.json").is_file() else {})
    return UISetup(priors, domains, root, out_root, config.device, config.controlnet,
                   32 if not config.prior else _native_size(config.prior))


def _native_size(prior: str) -> int:
    """The prior's native image size (UNet sample size x VAE factor), 512 when it cannot be read."""
    from .outputs import read_json_object

    try:
        unet = read_json_object(Path(prior, "unet", "config.json"))
        vae = read_json_object(Path(prior, "vae", "config.json"))
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (ValueError, KeyError, TypeError):
        return 512


def cmd_ui(args: argparse.Namespace) -> int:
    """Build the page and serve it until interrupted."""
    options = from_args(UIConfig, args)
    warning = host_warning(options.host)
    if warning:
        print(warning, file=sys.stderr)
    config = ui_setup(options)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no phoning home
    app = build_app(config)
    print(f"indomain ui: http://{options.host}:{options.port} (data root {config.data_root})", flush=True)
    app.queue().launch(server_name=options.host, server_port=options.port, allowed_paths=[str(config.data_root)],
                       show_error=False, ssr_mode=False, quiet=True, footer_links=[], css=CSS)
    return 0


# ----------------------------------------------------------------------------------------------------
# Helpers shared by the tabs


def _status(text: str) -> str:
    """The status line as HTML; an ``error:`` line is marked so it stands out."""
    kind = "error" if text.startswith("error:") else "ok"
    return f"<p class='indomain-status {kind}'>{html.escape(text)}</p>"


def _guarded(fn: Callable, n_outputs: int) -> Callable:
    """``fn`` whose expected errors (the CLI's) become the ``error:`` line in its last output, never a traceback."""
    import functools

    import gradio as gr

    from .console import expected_errors

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except expected_errors() as e:
            message = f"error: {e}"
        except Exception as e:  # a bug: the page gets one line, the server's console the traceback
            traceback.print_exc()
            message = f"error: internal error ({type(e).__name__}: {e}); the server's console has the details"
        return (*[gr.skip()] * (n_outputs - 1), _status(message))

    return run


class _ArgumentError(ValueError):
    """An option the command's parser refuses (its message is the CLI's)."""


def _parse(argv: list[str]) -> Any:
    """The `GenerateConfig` / `EditConfig` of ``indomain generate|edit <argv>``, parsed by the command's own parser,
    raising on a bad value instead of exiting."""
    from .cliargs import from_args
    from .generate import EditConfig, GenerateConfig, add_edit_parser, add_generate_parser

    parser = argparse.ArgumentParser(prog="indomain")
    sub = parser.add_subparsers(dest="command", required=True)
    {"generate": add_generate_parser, "edit": add_edit_parser}[argv[0]](sub, "")

    def error(message: str) -> None:
        raise _ArgumentError(message)

    for p in [parser, *sub.choices.values()]:
        p.error = error  # type: ignore[method-assign]
    return from_args({"generate": GenerateConfig, "edit": EditConfig}[argv[0]], parser.parse_args(argv))


def _pick(name: str | None, known: dict[str, str], root: Path, what: str) -> str:
    """A model chosen in the page: one the operator named, a folder typed in (confined to the data root), or a hub id
    (``owner/name`` where no such folder exists; read through the Hugging Face cache, or downloaded when online)."""
    import re

    from .uipaths import confine

    if name in known:
        return known[name]
    path = confine(name or "", root, what)
    if not path.exists() and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name or ""):
        return name  # type: ignore[return-value]
    return str(path)


def _new_folder(config: UISetup, kind: str) -> Path:
    from .uijobs import stamp

    return config.out_root / f"{kind}-{stamp()}"


# ----------------------------------------------------------------------------------------------------
# Generate


class Generator:
    """The Generate tab's work: one cached pipeline, a Stop flag, and the calls `indomain generate` makes."""

    def __init__(self, config: UISetup) -> None:
        self.config = config
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.cache: tuple[tuple, Any, str] | None = None  # (key, pipeline, device)

    def args(self, prior: str, domains: Sequence[str], prompt: str, negative: str, w_d: float, w_c: float,
             steps: int, seed: int, num: int, size: int | None, control_image: str | None, out: Path) -> GenerateConfig:
        """The `indomain generate` options of the page's settings."""
        c = self.config
        argv = ["generate", "--prior", _pick(prior, c.priors, c.data_root, "prior"), "--out", str(out),
                "--domain-guidance-scale", str(w_d if domains else 0.0), "--guidance-scale", str(w_c),
                "--steps", str(int(steps)),
                "--seed", str(int(seed)), "--num-images", str(int(num)), "--device", c.device]
        for d in domains:
            argv += ["--domain", _pick(d, c.domains, c.data_root, "domain model")]
        if prompt:
            argv += ["--prompt", prompt]
        if negative:
            argv += ["--negative-prompt", negative]
        if size:
            argv += ["--height", str(int(size)), "--width", str(int(size))]
        if c.controlnet and control_image:
            argv += ["--controlnet", c.controlnet, "--control-image", control_image]
        return _parse(argv)

    def open(self, args: GenerateConfig) -> tuple[Any, Path, str]:
        """The pipeline for ``args`` (loaded by `indomain generate`'s own loader, or the cached one) and ``--out``
        claimed for `generate`."""
        from .generate import _open_pipeline
        from .outputs import claim_output_dir
        from .pipeline import InDomainPipeline

        key = (args.prior, tuple(d for d, _ in args.domain or ()), tuple(args.controlnet or ()), args.device,
               args.domain_guidance_scale if len(args.domain or ()) > 1 else None)  # extra domains' weights are set at load
        if self.cache is not None and self.cache[0] == key:
            inputs = {"--prior": args.prior, "--domain": [d for d, _ in args.domain or ()],
                      "--control-image": args.control_image}
            return self.cache[1], claim_output_dir(args.out, "generate", inputs=inputs), self.cache[2]
        self.cache = None
        pipe, out, device = _open_pipeline(InDomainPipeline, args, "generate")
        pipe.set_progress_bar_config(disable=True)
        self.cache = (key, pipe, device)
        return pipe, out, device

    def guidance(self, pipe: Any, args: GenerateConfig) -> dict[str, Any]:
        """How `indomain generate` would measure the prompt's term here: the form `indomain tune` stored with the
        domain model when it applies (and its band settings), else the `auto` form."""
        from .generate import _applicable, _guidance_form, _tuned_guidance

        tuned = _applicable(_tuned_guidance(args), args, pipe)
        if tuned is None:
            return {"guidance_form": _guidance_form(args.guidance_form, pipe, args.domain_every)}
        return {k: tuned[k] for k in ("guidance_form", "layout_guidance_scale", "layout_sigma") if k in tuned}

    def sample(self, pipe: Any, args: GenerateConfig, device: str, w_d: float, w_c: float, seeds: list[int],
               tick: Callable[[], None], guidance: dict[str, Any] | None = None) -> list | None:
        """`indomain generate`'s pipeline call at weights (w_d, w_c); None when Stop was pressed. ``guidance``: the
        form (`guidance`) for w_d != 0; w_d = 0 is the prior alone (Eq. A at w_d = 0, whatever the form)."""
        import torch

        from .generate import _control_call_kwargs

        def callback(p: Any, i: int, t: Any, tensors: dict) -> dict:
            tick()
            if self.stop.is_set():
                p._interrupt = True
            return {}

        images = pipe(
            prompt=args.prompt[0] if args.prompt else None, negative_prompt=args.negative_prompt,
            weighted_prompts=args.weighted_prompt, num_images_per_prompt=len(seeds),
            num_inference_steps=args.steps, guidance_scale=w_c, domain_guidance_scale=w_d,
            domain_guidance_every=args.domain_every, height=args.height, width=args.width,
            generator=[torch.Generator(device).manual_seed(s) for s in seeds], callback_on_step_end=callback,
            **_control_call_kwargs(args, pipe), **(guidance if guidance and w_d != 0 else {}),
        ).images
        return None if self.stop.is_set() else images

    def run(self, grid: bool, prior: str, domains: list[str], prompt: str, negative: str, w_d: float, w_c: float,
            steps: int, seed: int, num: int, size: int | None, control_image: str | None,
            progress: Any) -> tuple[list, list, list[str], str]:
        """Prior alone and ours with the same seeds (or, with ``grid``, one image per (w_d, w_c) of the weight grid),
        written like `indomain generate` writes: PNGs, grid.png, settings.json, plus images.zip to download."""
        from .generate import _finish
        from .outputs import close_run, make_grid

        with self.lock:
            self.stop.clear()
            out_folder = _new_folder(self.config, "grid" if grid else "generate")
            args = self.args(prior, domains, prompt, negative, w_d, w_c, steps, seed, 1 if grid else num, size,
                             control_image, out_folder)
            if grid and not args.domain:
                raise ValueError("the weight grid varies w_d: choose a domain model")
            try:
                pipe, out, device = self.open(args)
            except BaseException:
                close_run(out_folder)  # claimed, then the model failed to load: leave no empty folder behind
                raise
            try:
                if grid:
                    settings = [(wd, wc) for wc in GRID_W_C for wd in GRID_W_D]
                    seeds = [args.seed]
                else:
                    settings = [(0.0, args.guidance_scale)] + ([(args.domain_guidance_scale, args.guidance_scale)] if args.domain else [])
                    seeds = [args.seed + i for i in range(args.num_images)]
                total, done = len(settings) * args.steps, [0]

                def tick() -> None:
                    done[0] += 1
                    progress((done[0], total), desc="sampling", unit="steps")

                start = time.time()
                results = []
                guidance = self.guidance(pipe, args) if args.domain else None
                for wd, wc in settings:
                    images = self.sample(pipe, args, device, wd, wc, seeds, tick, guidance)
                    if images is None:
                        return [], [], [], _status(f"stopped after {done[0]} of {total} steps; nothing was saved")
                    results.append(images)
                files, shown_prior, shown_ours = [], [], []
                for k, ((wd, wc), images) in enumerate(zip(settings, results)):
                    for s, image in zip(seeds, images):
                        name = f"wd{wd:g}_wc{wc:g}_seed{s:06d}.png" if grid else f"{'ours' if k else 'prior'}_seed{s:06d}.png"
                        image.save(out / name)
                        files.append({"file": name, "prompt": args.prompt[0] if args.prompt else None, "seed": s,
                                      "domain_guidance_scale": wd, "guidance_scale": wc,
                                      "guidance_form": guidance["guidance_form"] if guidance and wd else "decoupled"})
                        caption = f"w_d {wd:g}, w_c {wc:g}" if grid else f"seed {s}"
                        (shown_ours if grid or name.startswith("ours") else shown_prior).append((str(out / name), caption))
                all_images = [im for images in results for im in images]
                make_grid(all_images, ncols=len(GRID_W_D) if grid else len(seeds)).save(out / "grid.png")
                _finish(args, pipe, out, device, files, start, "images")
                download = out / "images.zip"
                with zipfile.ZipFile(download, "w") as z:
                    for f in [*(out / x["file"] for x in files), out / "grid.png", out / "settings.json"]:
                        z.write(f, f.name)
            finally:
                close_run(out)
            from .uipaths import shown

            what = (f"weight grid: columns w_d = {', '.join(f'{v:g}' for v in GRID_W_D)}; rows w_c = "
                    f"{', '.join(f'{v:g}' for v in GRID_W_C)}; " if grid else "")
            if grid or not args.domain:
                images_text = f"{len(files)} images" + ("" if grid or args.domain else " (no domain model chosen: the prior alone)")
            else:
                images_text = f"{len(seeds)} prior-alone and {len(seeds)} ours images (seeds {seeds[0]}-{seeds[-1]})"
            return (shown_prior, shown_ours, [str(download)],
                    _status(f"{what}wrote {images_text}, grid.png and settings.json to "
                            f"{shown(out, self.config.data_root)} in {time.time() - start:.1f} s"))


# ----------------------------------------------------------------------------------------------------
# Edit


def run_edit(config: UISetup, image: str | None, prior: str, domains: list[str], prompt: str, negative: str,
             w_d: float, w_c: float, strength: float, method: str, steps: int, seed: int) -> tuple[str, str, str]:
    """`indomain edit` on one uploaded image; returns (before, after, status)."""
    from .generate import edit
    from .outputs import close_run
    from .uipaths import shown

    if not image:
        raise ValueError("upload an image to edit")
    out = _new_folder(config, "edit")
    argv = ["edit", "--image", image, "--prior", _pick(prior, config.priors, config.data_root, "prior"),
            "--out", str(out), "--strength", str(strength), "--method", method, "--steps", str(int(steps)),
            "--seed", str(int(seed)), "--domain-guidance-scale", str(w_d if domains else 0.0),
            "--guidance-scale", str(w_c), "--device", config.device]
    for d in domains:
        argv += ["--domain", _pick(d, config.domains, config.data_root, "domain model")]
    if prompt:
        argv += ["--prompt", prompt]
    if negative:
        argv += ["--negative-prompt", negative]
    args = _parse(argv)
    try:
        edit(args)
    finally:
        close_run(out)
    after = sorted(out.glob("0000_*.png"))[0]
    return image, str(after), _status(f"edited ({method}, strength {strength:g}); wrote {shown(out, config.data_root)}")


# ----------------------------------------------------------------------------------------------------
# Train


def _train_config(config: UISetup, source: str, files: list[str] | None, folder: str, prior: str, kind: str,
                  rank: float, steps: float, lr: str, resolution: float, every: float, sample_steps: float) -> Any:
    from .train import TrainConfig
    from .uijobs import save_uploads, stamp
    from .uipaths import confine

    try:
        rate = float(lr) if (lr or "").strip() else None
    except ValueError:
        raise ValueError(f"--learning-rate: expected a number, got {lr!r}") from None
    values = {"--max-train-steps": steps, "--resolution": resolution, "--validation-steps": every,
              "--validation-inference-steps": sample_steps, "--lora-rank": rank}
    for flag, value in values.items():
        if value is None or value != int(value) or value < 1:
            raise ValueError(f"{flag} must be a whole number >= 1, got {value!r}")
    images = save_uploads(files or [], config.out_root) if source == "upload" else confine(folder, config.data_root, "images folder")
    return TrainConfig(
        prior=_pick(prior, config.priors, config.data_root, "prior"), images=str(images),
        output=str(config.out_root / f"train-{stamp()}"), resolution=int(resolution), max_train_steps=int(steps),
        learning_rate=rate, lora_rank=int(rank) if kind == "LoRA" else None, validation_steps=int(every),
        checkpointing_steps=int(every), validation_inference_steps=int(sample_steps), log_every=1)


def _train_view(config: UISetup, run_name: str | None) -> tuple[Any, Any, list, str]:
    """(runs dropdown, loss curve, samples, status) of the chosen run (default: the newest)."""
    import gradio as gr
    import pandas as pd

    from .uijobs import list_runs, read_status

    runs = [p.name for p in list_runs(config.out_root)]
    name = run_name if run_name in runs else (runs[0] if runs else None)
    choose = gr.update(choices=runs, value=name)
    if name is None:
        return choose, pd.DataFrame({"step": [], "loss": []}), [], _status("no training run yet")
    status = read_status(config.out_root / name)
    curve = pd.DataFrame({"step": [s for s, _ in status.losses], "loss": [v for _, v in status.losses]})
    samples = [(str(p), p.stem) for p in reversed(status.samples)]  # the newest first
    return choose, curve, samples, _status(f"{name}: {status.message}")


# ----------------------------------------------------------------------------------------------------
# Results


def open_results(config: UISetup, folder: str) -> tuple[list, list, str, str]:
    """An `evaluate` or `world benchmark` folder: (plots, grids, table markdown, status)."""
    from .uipaths import confine, shown

    path = confine(folder, config.data_root, "results folder")
    if not path.is_dir():
        raise ValueError(f"results folder {folder!r} does not exist")
    plots = sorted(path.glob("tradeoff-*.png")) + sorted(path.glob("plot.png"))
    grids = sorted(path.glob("grids/*.png")) + sorted(path.glob("eval-*/grids/*.png"))
    if (path / "results.csv").is_file():
        table = _evaluate_table(path)
    elif (path / "RESULTS.md").is_file():
        table = (path / "RESULTS.md").read_text(errors="replace")
    else:
        raise ValueError(f"{shown(path, config.data_root)} is not an `indomain evaluate` or `indomain world benchmark` "
                         "output folder (no results.csv or RESULTS.md)")
    return ([(str(p), p.name) for p in plots], [(str(p), f"{p.parent.parent.name}/{p.stem}") for p in grids][:60], table,
            _status(f"{shown(path, config.data_root)}: {len(plots)} plot(s), {len(grids)} grid(s)"))


def _evaluate_table(path: Path) -> str:
    """results.csv as a markdown table with the Pareto front of its plot's axes marked (●)."""
    import csv

    from .report import LOWER_IS_BETTER, _axes
    from .world.benchmark import pareto_front

    with open(path / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path / 'results.csv'}: no rows")
    numeric = [{k: _number(v) for k, v in r.items()} for r in rows]
    x, y = _axes(numeric, None, None)
    front: set[int] = set()
    if y is not None:
        sign = 1 if y in LOWER_IS_BETTER else -1
        points = [(float(r.get(x, float("nan"))), sign * float(r.get(y, float("nan")))) for r in numeric]
        front = set(pareto_front(points))
    cols = list(rows[0])
    lines = ["| Pareto | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {'●' if i in front else ''} | " + " | ".join(r[c] for c in cols) + " |" for i, r in enumerate(rows)]
    return f"● marks the Pareto front over {x} (higher is better) and {y}.\n\n" + "\n".join(lines)


def _number(value: str) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


# ----------------------------------------------------------------------------------------------------
# The page


CSS = """
.indomain-status.error { color: #b00020; font-weight: 600; }
#prior-gallery img, #ours-gallery img, #train-samples img, #results-grids img { image-rendering: pixelated; }
.indomain-status { font-family: ui-monospace, monospace; white-space: pre-wrap; }
"""


def build_app(config: UISetup) -> Any:
    """The gradio Blocks of the page (not started)."""
    import gradio as gr

    from .uijobs import read_status, start_training, stop_training

    gen = Generator(config)
    with gr.Blocks(title="indomain") as app:
        gr.Markdown("# indomain\nA frozen prior plus a null-text domain model: `eps = eps(x,∅) + w_d (eps_domain(x) − "
                    "eps(x,∅)) + w_c (eps(x,c) − eps(x,∅))`. Paths are read inside the data root "
                    f"`{config.data_root}`.")
        with gr.Row():
            prior = gr.Dropdown(list(config.priors), value=next(iter(config.priors)), label="prior", allow_custom_value=True,
                                elem_id="prior")
            domains = gr.Dropdown(list(config.domains), value=list(config.domains)[:1], multiselect=True,
                                  allow_custom_value=True, label="domain model(s): a folder from `indomain train`",
                                  elem_id="domains")
        with gr.Row():
            w_d = gr.Slider(-2, 8, value=4.0, step=0.1, label="w_d: how far into the domain", elem_id="w_d")
            w_c = gr.Slider(-2, 10, value=2.5, step=0.1, label="w_c: how much prompt control", elem_id="w_c")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    prompt = gr.Textbox(label="prompt (empty: unconditional in-domain)", elem_id="prompt")
                    negative = gr.Textbox(label="negative prompt", elem_id="negative")
                with gr.Row():
                    steps = gr.Slider(1, 100, value=25, step=1, label="steps", elem_id="steps")
                    seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                    num = gr.Slider(1, 16, value=4, step=1, label="images", elem_id="num")
                    size = gr.Number(None, precision=0, label="size in pixels (empty: the prior's)", elem_id="size")
                control = gr.Image(type="filepath", label="ControlNet image", visible=bool(config.controlnet))
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                    grid_btn = gr.Button("Weight grid", elem_id="grid-btn")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                gen_status = gr.HTML(elem_id="gen-status")
                with gr.Row():
                    prior_gallery = gr.Gallery(label="prior alone (w_d = 0), same seeds", columns=4, height="auto",
                                               elem_id="prior-gallery")
                    ours_gallery = gr.Gallery(label="ours (w_d, w_c from the sliders); the weight grid", columns=4,
                                              height="auto", elem_id="ours-gallery")
                download = gr.File(label="download: images.zip (PNGs, grid.png, settings.json)", elem_id="download")
                inputs = [prior, domains, prompt, negative, w_d, w_c, steps, seed, num, size, control]
                outputs = [prior_gallery, ours_gallery, download, gen_status]

                def generate(*values: Any, progress: Any = gr.Progress()) -> Any:
                    return gen.run(False, *values, progress=progress)

                def weight_grid(*values: Any, progress: Any = gr.Progress()) -> Any:
                    return gen.run(True, *values, progress=progress)

                go.click(_guarded(generate, 4), inputs, outputs, concurrency_id="gpu")
                grid_btn.click(_guarded(weight_grid, 4), inputs, outputs, concurrency_id="gpu")
                stop.click(lambda: gen.stop.set(), None, None, queue=False)
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    source = gr.Radio(["server folder", "upload"], value="server folder", label="images from",
                                      elem_id="train-source")
                    folder = gr.Textbox(label="images folder (inside the data root)", elem_id="train-folder")
                    files = gr.File(file_count="multiple", file_types=["image"], label="upload images", visible=False,
                                    elem_id="train-upload")
                source.change(lambda s: (gr.update(visible=s != "upload"), gr.update(visible=s == "upload")), [source],
                              [folder, files], queue=False)
                with gr.Row():
                    kind = gr.Radio(["full", "LoRA"], value="full", label="train", elem_id="train-kind")
                    rank = gr.Number(4, precision=0, label="LoRA rank", elem_id="train-rank")
                    t_steps = gr.Number(200, precision=0, label="steps", elem_id="train-steps")
                    lr = gr.Textbox("", label="learning rate (empty: 1e-5 full, 1e-4 LoRA)", elem_id="train-lr")
                    resolution = gr.Number(config.resolution, precision=0, label="resolution", elem_id="train-resolution")
                    every = gr.Number(50, precision=0, label="samples + checkpoint every N steps", elem_id="train-every")
                    sample_steps = gr.Number(10, precision=0, label="sampler steps of the samples", elem_id="train-sample-steps")
                with gr.Row():
                    start = gr.Button("Start training", variant="primary", elem_id="train-start")
                    t_stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
                    resume = gr.Button("Resume", elem_id="train-resume")
                train_msg = gr.HTML(elem_id="train-message")  # what the last button did (an error stays here)
                run = gr.Dropdown([], label="run", elem_id="train-run")
                train_status = gr.HTML(elem_id="train-status")  # the chosen run, read every 2 s
                with gr.Row():
                    curve = gr.LinePlot(x="step", y="loss", label="training loss", elem_id="train-loss")
                    samples = gr.Gallery(label="validation samples: one row per step (unconditional, w_d as in "
                                         "training)", columns=1, object_fit="contain", elem_id="train-samples")
                view = [run, curve, samples, train_status]

                def begin(*values: Any) -> Any:
                    cfg = _train_config(config, *values)
                    start_training(cfg)
                    return (*_train_view(config, Path(cfg.output).name), _status(f"started {Path(cfg.output).name}"))

                def halt(name: str | None) -> Any:
                    if not name:
                        raise ValueError("no run chosen")
                    message = stop_training(config.out_root / name)
                    return (*_train_view(config, name), _status(message))

                def again(name: str | None) -> Any:
                    import json

                    from .train import TrainConfig

                    if not name:
                        raise ValueError("no run chosen")
                    path = config.out_root / name
                    if read_status(path).state == "running":
                        raise ValueError(f"{name} is running")
                    saved = json.loads((path / "train_config.json").read_text()) if (path / "train_config.json").is_file() else None
                    if saved is None:
                        raise ValueError(f"{name} wrote no train_config.json: nothing to resume")
                    start_training(TrainConfig(**{**saved, "resume": "latest", "overwrite": False}))
                    return (*_train_view(config, name), _status(f"resumed {name} from its last checkpoint"))

                start.click(_guarded(begin, 5), [source, files, folder, prior, kind, rank, t_steps, lr, resolution,
                                                 every, sample_steps], [*view, train_msg])
                t_stop.click(_guarded(halt, 5), [run], [*view, train_msg])
                resume.click(_guarded(again, 5), [run], [*view, train_msg])
                run.input(_guarded(lambda n: _train_view(config, n), 4), [run], view)
                timer = gr.Timer(2.0)
                timer.tick(_guarded(lambda n: _train_view(config, n), 4), [run], view, show_progress="hidden")
                app.load(_guarded(lambda: _train_view(config, None), 4), None, view)
            with gr.Tab("Edit", id="edit"):
                with gr.Row():
                    e_image = gr.Image(type="filepath", label="before (upload)", elem_id="edit-before")
                    e_after = gr.Image(type="filepath", label="after", interactive=False, elem_id="edit-after")
                with gr.Row():
                    e_prompt = gr.Textbox(label="control prompt", elem_id="edit-prompt")
                    e_neg = gr.Textbox(label="negative prompt", elem_id="edit-negative")
                    strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="strength", elem_id="edit-strength")
                    method = gr.Radio(["sdedit", "invert"], value="sdedit", label="method", elem_id="edit-method")
                    e_steps = gr.Slider(1, 100, value=25, step=1, label="steps", elem_id="edit-steps")
                    e_seed = gr.Number(0, precision=0, label="seed", elem_id="edit-seed")
                e_go = gr.Button("Edit", variant="primary", elem_id="edit-btn")
                e_status = gr.HTML(elem_id="edit-status")
                e_go.click(_guarded(lambda *v: run_edit(config, *v), 3),
                           [e_image, prior, domains, e_prompt, e_neg, w_d, w_c, strength, method, e_steps, e_seed],
                           [e_image, e_after, e_status], concurrency_id="gpu")
            with gr.Tab("Results", id="results"):
                with gr.Row():
                    r_folder = gr.Textbox(label="an `indomain evaluate` or `world benchmark` output folder",
                                          elem_id="results-folder")
                    r_go = gr.Button("Open", elem_id="results-btn")
                r_status = gr.HTML(elem_id="results-status")
                r_plots = gr.Gallery(label="trade-off plot (world benchmark: the Pareto front ringed)", columns=2,
                                     elem_id="results-plots")
                r_table = gr.Markdown(elem_id="results-table")
                r_grids = gr.Gallery(label="grids", columns=6, elem_id="results-grids")
                r_go.click(_guarded(lambda f: open_results(config, f), 4), [r_folder],
                           [r_plots, r_grids, r_table, r_status])
    return app
