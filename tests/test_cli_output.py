"""The command line starts without torch and speaks only when it has something to say (issue #10, §4).

Start-up *time* is measured by benchmarks/cli_startup.py (BENCHMARKS.md); these tests check the properties that
make it fast (what `--help` and `import indomain` import) and what each output level prints.
"""

import json
import subprocess
import sys
import warnings

import pytest

from indomain import console
from indomain.cli import build_parser, main
from indomain.testing import save_tiny_prior

HEAVY = ("torch", "diffusers", "transformers", "torchmetrics", "accelerate", "matplotlib", "numpy")


def _imported_after(code: str) -> set[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split("\n")[-2].split())


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["evaluate", "--help"], ["convert", "--help"],
                                  ["demo", "--help"], ["world", "--help"], ["world", "train-prior", "--help"],
                                  ["world", "benchmark", "--help"], ["world", "evaluator-sanity", "--help"],
                                  ["train", "--help"], ["edit", "--help"],
                                  ["3d", "--help"], ["tune", "--help"]], ids=" ".join)
def test_help_imports_no_heavy_library(argv):
    code = f"from indomain.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert _imported_after(code) == set()


def test_import_indomain_loads_torch_only_when_a_model_name_is_touched():
    assert _imported_after("import indomain\nassert indomain.__version__") == set()
    loaded = _imported_after("import indomain\nindomain.InDomainPipeline")
    assert {"torch", "diffusers"} <= loaded


def test_public_names_still_import():
    import indomain
    from indomain import InDomainPipeline, NullTextUNet, combine, decoupled

    assert indomain.__all__ == sorted(indomain.__all__) and "InDomainPipeline" in indomain.__all__
    assert set(indomain.__all__) <= set(dir(indomain))
    assert InDomainPipeline.__module__ == "indomain.pipeline" and NullTextUNet.__module__ == "indomain.nulltext"
    assert callable(combine) and callable(decoupled)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        indomain.nope  # noqa: B018


def test_the_quick_command_list_matches_the_full_parsers():
    """`indomain --help` lists commands without importing them; each line must be the command's own help."""
    assert build_parser(["--help"]).format_help() == build_parser().format_help()


@pytest.mark.parametrize("argv,level", [
    (["generate", "--prior", "p", "--out", "o"], console.DEFAULT),
    (["-q", "generate", "--prior", "p", "--out", "o"], console.QUIET),
    (["generate", "--prior", "p", "--out", "o", "--quiet"], console.QUIET),
    (["--verbose", "train", "--prior", "p", "--images", "i", "--output", "o"], console.VERBOSE),
    (["-q", "world", "render", "--out", "o", "-v"], console.VERBOSE),  # the later one wins
])
def test_quiet_and_verbose_go_before_or_after_the_command(argv, level):
    assert build_parser(argv).parse_args(argv).verbosity == level


# -- what `generate` prints at each level --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    return save_tiny_prior(tmp_path_factory.mktemp("prior") / "prior")


@pytest.fixture
def noisy_libraries(monkeypatch):
    """A transformers log warning and a diffusers FutureWarning on every scheduler build, as the libraries give
    them (the real ones are emitted once per process, so a test cannot count on seeing them)."""
    from transformers.utils import logging as transformers_logging

    import indomain.schedulers

    real = indomain.schedulers.make_scheduler

    def make_scheduler(name, config):
        transformers_logging.get_logger("transformers.models.fake").warning("transformers says: careful")
        warnings.warn_explicit("diffusers says: deprecated", FutureWarning, "diffusers/fake.py", 1,
                               module="diffusers.fake")
        return real(name, config)

    monkeypatch.setattr(indomain.schedulers, "make_scheduler", make_scheduler)


def _generate(prior, out, *flags):
    return main([*flags, "generate", "--prior", str(prior), "--domain-scale", "0", "--num-images", "2", "--steps", "2",
                 "--scheduler", "ddim", "--out", str(out)])


def _logged(caplog) -> str:
    # the libraries' log handlers write to the stderr of the moment they were set up, so read the records instead
    return "\n".join(record.getMessage() for record in caplog.records)


def test_default_shows_our_labelled_bar_and_the_result_only(prior, tmp_path, capfd, caplog, noisy_libraries):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _generate(prior, tmp_path / "g") == 0
    out, err = capfd.readouterr()
    assert out == f"wrote 2 images, grid.png and settings.json to {tmp_path / 'g'}\n"
    assert "sampling" in err  # the sampler's bar, labelled
    for noise in ("Loading pipeline components", "Loading weights"):
        assert noise not in err
    assert "transformers says" not in _logged(caplog) + err
    assert not [w for w in caught if "diffusers says" in str(w.message)]


def test_several_prompts_show_one_bar_over_all_their_steps(prior, tmp_path, capfd):
    assert main(["generate", "--prior", str(prior), "--domain-scale", "0", "--num-images", "1", "--steps", "2",
                 "--scheduler", "ddim", "--prompt", "a cat", "--prompt", "a dog", "--prompt", "a cow",
                 "--out", str(tmp_path / "g")]) == 0
    err = capfd.readouterr().err
    finished = [line for line in err.replace("\r", "\n").splitlines() if "sampling" in line and "100%" in line]
    # one bar of 3 prompts x 2 steps, drawn to the end (one bar per prompt would end three times at 2/2)
    assert finished and all("6/6" in line for line in finished), err


def test_verbose_shows_what_the_libraries_print(prior, tmp_path, capfd, caplog, noisy_libraries):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _generate(prior, tmp_path / "g", "--verbose") == 0
    err = capfd.readouterr().err
    assert "Loading pipeline components" in err and "sampling" in err
    assert "transformers says: careful" in _logged(caplog)
    assert [w for w in caught if "diffusers says" in str(w.message)]


def test_quiet_prints_the_result_line_only(prior, tmp_path, capfd, caplog, noisy_libraries):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _generate(prior, tmp_path / "g", "--quiet") == 0
    out, err = capfd.readouterr()
    assert out.splitlines() == [f"wrote 2 images, grid.png and settings.json to {tmp_path / 'g'}"] and err == ""
    assert not caught and "transformers says" not in _logged(caplog)


def test_levels_are_restored_after_the_command(prior, tmp_path, noisy_libraries):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = [(log.get_verbosity(), log.is_progress_bar_enabled()) for log in (diffusers_logging, transformers_logging)]
    _generate(prior, tmp_path / "g", "--quiet")
    after = [(log.get_verbosity(), log.is_progress_bar_enabled()) for log in (diffusers_logging, transformers_logging)]
    assert after == before and console.level() == console.DEFAULT


def test_generate_json_is_the_settings_record(prior, tmp_path, capfd):
    assert main(["generate", "--prior", str(prior), "--domain-scale", "0", "--num-images", "2", "--steps", "2",
                 "--out", str(tmp_path / "j"), "--json"]) == 0
    record = json.loads(capfd.readouterr().out)
    assert [image["file"] for image in record["images"]] == ["p00_seed000000.png", "p00_seed000001.png"]
    assert record == json.loads((tmp_path / "j" / "settings.json").read_text())
    assert "json" not in record["settings"] and "verbosity" not in record["settings"]


def test_evaluate_json_is_the_rows_and_the_output_paths(prior, tmp_path, capfd):
    out = tmp_path / "ev"
    assert main(["evaluate", "--prior", str(prior), "--num-images", "2", "--batch-size", "2", "--steps", "2",
                 "--scheduler", "ddim", "--guidance-scales", "0", "--out", str(out), "--json"]) == 0
    record = json.loads(capfd.readouterr().out)
    (row,) = record["rows"]
    assert row["method"] == "prior" and row["n_generated"] == 2
    assert record["files"]["results.json"] == str(out / "results.json") and (out / "results.json").is_file()
    assert record["settings"][row["setting"]]["grid"] == str(out / "grids" / f"{row['setting']}.png")


def test_the_emoji_prior_loads_without_a_types_warning(capfd):
    from diffusers.utils import logging as diffusers_logging

    from indomain import InDomainPipeline
    from indomain.world.prior import emoji_prior_dir

    assert diffusers_logging.get_verbosity() <= diffusers_logging.WARNING  # so the warning would show
    capfd.readouterr()
    InDomainPipeline.from_pretrained(emoji_prior_dir())
    assert "Expected types" not in capfd.readouterr().err
