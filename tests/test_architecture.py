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
    "latent_cache": 0,  # the sharded VAE latent cache of `indomain train` and the image -> pixels transform
    # 1. the core: open models, sample
    "loading": 1, "pipeline": 1, "editing": 1,
    "pipeline_xl": 1, "pipeline_sd3": 1, "autopipeline": 1,  # the SDXL / SD3 pipelines on the same core
    "shared_base": 1,  # a LoRA domain model served from the prior's UNet
    "student": 1,  # a distilled student: Eq. A in one UNet call per step
    # 2. learn and measure
    "train": 2, "metrics": 2,
    "sds": 2, "text3d": 2,  # score distillation and `indomain 3d`
    "generate": 2,  # `indomain generate` and `indomain edit`: the commands that sample
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
    # tests, benchmarks and experiments only
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


def _module_of(parts: list[str]) -> tuple[str, ...] | None:
    """The longest prefix of ``parts`` that is a module or package of indomain (``()`` is the package itself)."""
    for k in range(len(parts), 0, -1):
        stem = SRC.joinpath(*parts[:k])
        if stem.with_suffix(".py").is_file() or stem.joinpath("__init__.py").is_file():
            return tuple(parts[:k])
    return ()


def imported_modules(path: Path, text: str | None = None) -> set[tuple[str, ...]]:
    """indomain modules imported anywhere in ``path`` (module level or inside functions, not under
    ``if TYPE_CHECKING:``), as path parts below ``src/indomain``; ``()`` is a bare import of the package itself.
    ``text`` replaces the file's source."""
    tree = ast.parse(path.read_text() if text is None else text)
    package = list(path.relative_to(SRC).parent.parts)
    found: set[tuple[str, ...]] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                candidates = [base + (node.module.split(".") if node.module else []) + [a.name] for a in node.names]
            elif node.module and node.module.split(".")[0] == "indomain":
                candidates = [node.module.split(".")[1:] + [a.name] for a in node.names]
            else:
                candidates = []
            for parts in candidates:
                found.add(_module_of(parts))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "indomain":
                    found.add(_module_of(parts[1:]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imported_rooms(path: Path, text: str | None = None) -> set[str]:
    """indomain rooms imported anywhere in ``path`` (module level or inside functions); ``text`` replaces its source."""
    return {m[0] for m in imported_modules(path, text) if m}


def module_name(path: Path) -> tuple[str, ...]:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[:-1] if rel.name == "__init__" else rel.parts


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


# the emoji world's own floors: a room imports only from its floor or below (the world is one room outside)
WORLD_FLOORS = {
    "render": 0,  # the emoji, their styles and splits
    "domains": 1,  # the target domains (OpenMoji, sepia, sticker)
    "evaluators": 2,  # the scoring API
    "prior": 3, "evaluator_training": 3,  # the prior's trainer; the evaluators' trainer
    "controlnet": 4, "evaluator_sanity": 4, "benchmark": 4,  # built on the prior and the evaluators
    "tuning": 4,  # tune's scorer: the benchmark's held-out set is never probed
    "cli": 5, "__init__": 5,  # `indomain world ...`
}


def test_every_world_room_has_a_floor():
    assert {p.stem for p in (SRC / "world").glob("*.py")} == set(WORLD_FLOORS), "add new world modules to WORLD_FLOORS"


@pytest.mark.parametrize("path", sorted((SRC / "world").glob("*.py")), ids=lambda p: p.name)
def test_world_imports_go_down_or_sideways(path):
    own = WORLD_FLOORS[path.stem]
    for module in imported_modules(path):
        if len(module) == 2 and module[0] == "world" and module[1] != path.stem:
            assert WORLD_FLOORS[module[1]] <= own, f"world/{path.name} (floor {own}) imports world/{module[1]}.py"


def test_no_module_imports_the_package_itself():
    """``import indomain`` inside the package runs ``__init__`` (floor 5) from below: read ``version`` instead."""
    bare = [str(p.relative_to(SRC)) for p in MODULES if p.name != "__init__.py" and () in imported_modules(p)]
    assert not bare, f"bare `import indomain` (the whole package) in: {bare}"


def import_cycles() -> list[list[str]]:
    """Cycles of the run-time import graph between modules (``TYPE_CHECKING`` imports excluded)."""
    graph = {module_name(p): {m for m in imported_modules(p) if m} - {module_name(p)} for p in MODULES}
    cycles, state = [], {}

    def visit(node: tuple[str, ...], stack: list[tuple[str, ...]]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, set())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                cycles.append([".".join(m) or "indomain" for m in stack[stack.index(nxt):] + [nxt]])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycles():
    assert not import_cycles(), f"import cycles: {import_cycles()}"


def test_the_cycle_check_can_fail(monkeypatch):
    real = imported_modules

    def with_cycle(path: Path, text: str | None = None) -> set[tuple[str, ...]]:
        extra = {("pipeline",)} if path.name == "guidance.py" else set()
        return real(path, text) | extra

    monkeypatch.setitem(globals(), "imported_modules", with_cycle)
    assert any("guidance" in c and "pipeline" in c for c in import_cycles())


def _documented_floors(world: bool = False) -> dict[str, int]:
    """The floor of every room named in docs/ARCHITECTURE.md's house table (``—`` is the tests-only floor), or, with
    ``world``, in its table of `world/`."""
    import re

    doc = (SRC.parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    house, _, inside_world = doc.partition("### Inside `world/`")
    floors: dict[str, int] = {}
    for line in (inside_world if world else house).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.fullmatch(r"\d+|—", cells[0]):
            continue
        for name in re.findall(r"`(\w+)(?:\.py|/)`", cells[1]):
            floors[name] = 6 if cells[0] == "—" else int(cells[0])
    return floors


def test_architecture_md_draws_the_floors_table():
    assert _documented_floors() == FLOORS, "docs/ARCHITECTURE.md's table and FLOORS differ"
    assert _documented_floors(world=True) == {k: v for k, v in WORLD_FLOORS.items() if k != "__init__"}, \
        "docs/ARCHITECTURE.md's world table and WORLD_FLOORS differ"


def import_depth() -> int:
    """Modules on the longest chain of run-time imports (``a`` imports ``b`` imports ...): how tall the house really is."""
    from functools import lru_cache

    graph = {module_name(p): {m for m in imported_modules(p) if m} - {module_name(p)} for p in MODULES}

    @lru_cache(maxsize=None)
    def depth(node: tuple[str, ...]) -> int:
        return 1 + max((depth(n) for n in graph.get(node, ()) if n in graph), default=0)

    return max(depth(n) for n in graph) if not import_cycles() else -1


def house_summary() -> str:
    """Floors, rooms per floor, cycles and the largest files: the numbers the closing notes quote."""
    by_floor: dict[int, list[str]] = {}
    for name, floor in FLOORS.items():
        by_floor.setdefault(floor, []).append(name)
    sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(SRC.parent))) for p in MODULES), reverse=True)
    lines = [f"floors: {len(by_floor)} ({', '.join(f'{f}: {len(r)} rooms' for f, r in sorted(by_floor.items()))})",
             f"world floors: {len(set(WORLD_FLOORS.values()))}", f"import cycles: {len(import_cycles())}",
             f"longest import chain: {import_depth()} modules",
             "largest files:"] + [f"  {n:5d} {name}" for n, name in sizes[:10]]
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/test_architecture.py
    print(house_summary())
