"""Training runs started from the web page: `indomain train` in a background process, and what the page reads back.

Each run is two claimed folders under the UI's output folder: ``train-<stamp>/``, the `indomain train` run (the
model, ``train_log.jsonl``, ``samples/``, checkpoints), and ``train-<stamp>.job/``, the UI's record of it
(``job.json``: the command and process id; ``train.log``: what the process printed). The process runs in its own
session, so closing the page or stopping the server does not stop it; a reopened page lists the runs again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

JOB_SUFFIX = ".job"
_CHILDREN: dict[int, subprocess.Popen] = {}  # processes this server started (reaped with poll())


@dataclasses.dataclass
class TrainStatus:
    """What the page shows of one run."""

    run: Path
    state: str  # "running", "finished", "stopped" or "failed"
    message: str
    losses: list[tuple[int, float]]
    samples: list[Path]
    total_steps: int


def stamp() -> str:
    """A folder name part that sorts by time: ``20261203-101500-123``."""
    now = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{int(now * 1000) % 1000:03d}"


def save_uploads(files: list[str], out_root: Path) -> Path:
    """Copy uploaded images into a new claimed folder ``upload-<stamp>/`` under ``out_root``; returns it."""
    from .outputs import claim_output_dir, close_run

    if not files:
        raise ValueError("no images uploaded")
    folder = claim_output_dir(out_root / f"upload-{stamp()}", "ui-upload")
    try:
        for i, f in enumerate(files):
            src = Path(f)
            shutil.copyfile(src, folder / f"{i:04d}_{src.name}")
    finally:
        close_run(folder)
    return folder


def train_argv(config: Any) -> list[str]:
    """The `indomain train` command line of ``config`` (a `TrainConfig`): every field that differs from its default."""
    from .train import TrainConfig

    argv: list[str] = []
    defaults = TrainConfig(prior="", images="", output="")
    for f in dataclasses.fields(TrainConfig):
        value, meta = getattr(config, f.name), f.metadata
        if f.name in ("prior", "images", "output") or value != getattr(defaults, f.name):
            if isinstance(value, bool):
                argv.append(meta.get("flag") or "--" + ("no-" if f.default else "") + f.name.replace("_", "-"))
            elif value is not None:
                argv.append(meta.get("flag") or "--" + f.name.replace("_", "-"))
                argv += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return argv


def start_training(config: Any) -> subprocess.Popen:
    """Check ``config`` as `indomain train` would (an error is raised before anything is written), then start
    ``python -m indomain.cli train`` in the background, writing into ``config.output``; its job folder beside it."""
    from .outputs import check_paths_apart, claim_output_dir, close_run, read_run_record
    from .train import check_inputs

    check_inputs(config)  # settings, prior, images, resume checkpoint: the page shows the error at once
    run = Path(config.output)
    if config.resume is None and run.exists() and any(run.iterdir()):
        raise ValueError(f"{run} already holds a run; resume it or start a new one")
    if config.resume is not None and (read_run_record(run) or {}).get("command") != "train":
        raise ValueError(f"{run} holds no `indomain train` run to resume")
    check_paths_apart(run, {"--images": config.images, "--prior": config.prior}, "--output")
    job = claim_output_dir(run.with_name(run.name + JOB_SUFFIX), "ui-train", reuse=True)
    try:
        (job / "stopped").unlink(missing_ok=True)
        argv = [sys.executable, "-m", "indomain.cli", "-q", "train", *train_argv(config)]
        with open(job / "train.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _CHILDREN[proc.pid] = proc
        (job / "job.json").write_text(json.dumps({"argv": argv, "pid": proc.pid, "started": time.time(),
                                                  "run": str(run), "max_train_steps": config.max_train_steps,
                                                  "start_ticks": _start_ticks(proc.pid)}, indent=2))
    finally:
        close_run(job)
    return proc


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22); None where unknown."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, ticks: int | None = None) -> bool:
    """Whether the run's process still runs; ``ticks`` (its start time) tells it from a later process given its id."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if ticks is not None and _start_ticks(pid) not in (None, ticks):
        return False  # the id now belongs to another process
    try:  # a zombie of another parent has exited
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _job(run: Path) -> dict:
    from .outputs import read_json_object

    return read_json_object(run.with_name(run.name + JOB_SUFFIX) / "job.json", "the UI's record of a training run")


def stop_training(run: Path) -> str:
    """Stop the run's process (SIGTERM to its session); a later `start_training` with ``resume`` continues it."""
    job = _job(run)
    pid = int(job["pid"])
    if not _alive(pid, job.get("start_ticks")):
        return f"{run.name} is not running"
    os.killpg(pid, signal.SIGTERM)
    proc = _CHILDREN.get(pid)
    if proc is not None:
        proc.wait(timeout=30)
    from .outputs import claim_output_dir, close_run

    job = claim_output_dir(run.with_name(run.name + JOB_SUFFIX), "ui-train", reuse=True)
    try:
        (job / "stopped").touch()
    finally:
        close_run(job)
    return f"stopped {run.name}; Resume continues from its last checkpoint"


def list_runs(out_root: Path) -> list[Path]:
    """The training runs started from the page under ``out_root``, newest first."""
    if not out_root.is_dir():
        return []
    return sorted((p.with_name(p.name[: -len(JOB_SUFFIX)]) for p in out_root.glob("train-*" + JOB_SUFFIX)
                   if (p / "job.json").is_file()), reverse=True)


def read_status(run: Path) -> TrainStatus:
    """The run's state, loss curve (from ``train_log.jsonl``) and validation samples, as written so far."""
    job = _job(run)
    losses = []
    log = run / "train_log.jsonl"
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                losses.append((int(record["step"]), float(record["loss"])))
            except (ValueError, KeyError, TypeError):
                continue  # a line half-written right now
    samples = sorted((run / "samples").glob("*.png")) if (run / "samples").is_dir() else []
    total = int(job.get("max_train_steps", 0))
    step = losses[-1][0] if losses else 0
    job_dir = run.with_name(run.name + JOB_SUFFIX)
    if _alive(int(job["pid"]), job.get("start_ticks")):
        return TrainStatus(run, "running", f"running: step {step} of {total}", losses, samples, total)
    if (run / "README.md").is_file() and step >= total:
        return TrainStatus(run, "finished", f"finished: {step} steps; the model is in {run}", losses, samples, total)
    if (job_dir / "stopped").is_file():
        return TrainStatus(run, "stopped", f"stopped at step {step} of {total}", losses, samples, total)
    printed = (job_dir / "train.log").read_text(errors="replace") if (job_dir / "train.log").is_file() else ""
    errors = [line for line in printed.splitlines() if line.startswith("error:")]
    message = errors[-1] if errors else "error: the training process ended without a model (see " \
        f"{job_dir / 'train.log'})"
    return TrainStatus(run, "failed", message, losses, samples, total)
