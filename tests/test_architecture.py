"""The import rule of docs/ARCHITECTURE.md: every module imports only from its own floor or the floors below.

Imports inside functions count too (they are how the CLI stays fast, not a way around the rule); imports under
``if TYPE_CHECKING:`` do not, since they never run.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "indomain"

# floor of each room (a module, or a package by its folder name); docs/ARCHITECTURE.md draws the same table
FLOORS = {
    # 0. leaves: no imports from above floor 0
    "families": 0,  # the model-family table (SD, SDXL, SD3) and its detection
    "guidance": 0, "nulltext": 0, "safeload": 0, "schedulers": 0, "data": 0, "outputs": 0, "cliargs": 0,
    "checkpoint": 0, "console": 0, "version": 0, "numerics": 0,
    "devices": 0,  # the one device resolver
    "control": 0,  # ControlNet / T2I-Adapter residuals for the sampling core
    "nerf": 0,  # the 3-D scene for score distillation (pure torch)
    "streams": 0,  # a step's independent model calls on concurrent CUDA streams
    # 1. the core: open models, sample
    "loading": 1, "pipeline": 1, "editing": 1,
    "pipeline_xl": 1, "pipeline_sd3": 1, "autopipeline": 1,  # the SDXL / SD3 pipelines on the same core
    "shared_base": 1,  # a LoRA domain model served from the prior's UNet
    "student": 1,  # a distilled student: Eq. A in one UNet call per step
    # 2. learn and measure
    "train": 2, "metrics": 2,
    "sds": 2, "text3d": 2,  # score distillation and `indomain 3d`
    "distill": 2,  # `indomain distill`: the student's objective on the training loop
    "export": 2,  # `indomain export`: plain diffusers / single-file / LoRA files for other tools
    # 3. evaluation (generation + scoring) and its report
    "evaluate": 3, "report": 3,
    "uipaths": 0,  # paths typed in the web page, confined to its data root
    "uijobs": 3,  # training runs started from the web page, in background processes
    "tune": 3,  # `indomain tune`: weights chosen for a goal on probe prompts, validated on held-out ones
    # 4. the emoji world
    "world": 4,
    # 5. entry points
    "cli": 5, "demo": 5, "__init__": 5,
    "ui": 5,  # `indomain ui`, the gradio page
    # tests and benchmarks only
    "testing": 6,
}
CORE = {"guidance", "control", "nulltext", "safeload", "schedulers", "loading", "pipeline", "editing", "families",
        "pipeline_xl", "pipeline_sd3", "autopipeline", "shared_base", "streams", "student"}


def room(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_rooms(path: Path, text: str | None = None) -> set[str]:
    """indomain rooms imported anywhere in ``path`` (module level or inside functions); ``text`` replaces its source."""
    tree = ast.parse(path.read_text() if text is None else text)
    package = list(path.relative_to(SRC).parent.parts)
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts + [a.name] for a in node.names] if not node.module else [parts]
            elif node.module and node.module.split(".")[0] == "indomain":
                names = [node.module.split(".")[1:] or [a.name] for a in node.names]
            else:
                names = []
            for parts in names:
                if parts and (SRC.joinpath(parts[0]).is_dir() or SRC.joinpath(parts[0] + ".py").exists()):
                    found.add(parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "indomain" and len(parts) > 1:
                    found.add(parts[1])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


MODULES = sorted(p for p in SRC.rglob("*.py"))


def test_every_room_has_a_floor():
    assert {room(p) for p in MODULES} <= set(FLOORS), "add new modules to FLOORS and docs/ARCHITECTURE.md"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_or_sideways(path):
    own = room(path)
    for other in imported_rooms(path) - {own}:
        assert FLOORS[other] <= FLOORS[own], f"{path.relative_to(SRC)} (floor {FLOORS[own]}) imports {other} (floor {FLOORS[other]})"
        if own in CORE:
            assert other in CORE or FLOORS[other] == 0, f"the core module {own} imports {other}"


def test_the_rule_catches_a_late_import_of_the_world_from_the_core():
    path = SRC / "pipeline.py"
    text = path.read_text() + "\n\ndef _late():\n    from .world.render import list_emoji\n"
    assert "world" in imported_rooms(path, text) and "world" not in imported_rooms(path)
