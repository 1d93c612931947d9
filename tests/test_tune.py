"""Tests for indomain.tune: the choice on hand-made tables (pure), and the command end to end on a tiny prior
(32 px, 2 sampler steps, 4 images per setting) with CLIP score + random-conv FID, or a stand-in scorer. Offline."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indomain import cli
from indomain import tune as T
from indomain.nulltext import NullTextUNet
from indomain.pipeline import InDomainPipeline
from indomain.testing import save_tiny_clip, save_tiny_prior

GOAL = T.Goal(control="control_top1", fidelity="fd_openmoji", keep=0.9)


def row(w_d: float, w_c: float, control: float, fidelity: float) -> dict:
    return {"method": "ours", "w_d": w_d, "w_c": w_c, "control_top1": control, "fd_openmoji": fidelity}


# The prior at (0, 2.5) has control 0.8, so settings need >= 0.72.
TABLE = [
    row(0, 2.5, 0.80, 30.0),  # the prior's reference
    row(0, 5.0, 0.85, 31.0),
    row(1, 2.5, 0.76, 22.0),  # keeps 0.95
    row(2, 2.5, 0.72, 18.0),  # keeps exactly 0.9: counts (0.72 / 0.8 is 0.8999... in floats)
    row(2, 5.0, 0.78, 18.0),  # same fidelity, more control: wins the tie
    row(4, 2.5, 0.40, 9.0),   # best fidelity, but loses the control
    row(4, 5.0, math.nan, 8.0),  # unscored: never chosen
]


# --------------------------------------------------------------------------------------------- the choice (pure)


def test_choose_takes_the_best_fidelity_that_keeps_the_control():
    choice = T.choose(TABLE, GOAL)
    assert (choice.chosen["w_d"], choice.chosen["w_c"]) == (2, 5.0)
    assert choice.reference["w_d"] == 0 and choice.reference["w_c"] == 2.5
    feasible = {(r["w_d"], r["w_c"]) for r in choice.rows if r["feasible"]}
    assert feasible == {(0, 2.5), (0, 5.0), (1, 2.5), (2, 2.5), (2, 5.0)}
    assert [r["kept"] for r in choice.rows][:3] == pytest.approx([1.0, 0.85 / 0.8, 0.95])
    assert choice.best_available is None

    # a stricter goal moves the choice; a higher-is-better fidelity column flips the order
    strict = T.choose(TABLE, T.Goal("control_top1", "fd_openmoji", keep=0.99)).chosen
    assert (strict["w_d"], strict["w_c"]) == (0, 2.5)
    higher = T.Goal("control_top1", "fd_openmoji", keep=0.9, fidelity_higher_is_better=True)
    assert (T.choose(TABLE, higher).chosen["w_d"], T.choose(TABLE, higher).chosen["w_c"]) == (0, 5.0)
    # the reference is found by its w_c
    moved = [dict(r, w_c=3.0) if (r["w_d"], r["w_c"]) == (0, 5.0) else r for r in TABLE]
    assert T.choose(moved, T.Goal("control_top1", "fd_openmoji", reference_w_c=3.0)).reference["control_top1"] == 0.85


def test_choose_says_when_no_setting_keeps_the_control_and_names_the_closest():
    with pytest.raises(T.NoFeasibleSetting, match=r"no setting .* keeps 1\.1 .*closest is decoupled w_d = 0, w_c = 5") as err:
        T.choose(TABLE, T.Goal("control_top1", "fd_openmoji", keep=1.1))
    choice = err.value.choice
    assert choice.chosen is None and (choice.best_available["w_d"], choice.best_available["w_c"]) == (0, 5.0)
    assert not any(r["feasible"] for r in choice.rows)
    assert isinstance(err.value, ValueError)  # the CLI prints it as one error line


def test_choose_refuses_tables_it_cannot_read():
    with pytest.raises(ValueError, match="no column 'clip_score'.*control_top1"):
        T.choose(TABLE, T.Goal("clip_score", "fd_openmoji"))
    with pytest.raises(ValueError, match="no prior's row at w_c = 7"):
        T.choose(TABLE, T.Goal("control_top1", "fd_openmoji", reference_w_c=7))
    zero = [dict(TABLE[0], control_top1=0.0), *TABLE[1:]]
    with pytest.raises(ValueError, match="prior's control_top1 is 0.0"):
        T.choose(zero, GOAL)
    with pytest.raises(ValueError, match="empty"):
        T.choose([], GOAL)


def test_choose_takes_the_prior_method_as_reference_and_never_chooses_it():
    # Under domain-text, ours at w_d = 0 is not the prior: the reference is the prior's own row, found by name.
    rows = [dict(r, method="ours-dt") for r in TABLE] + [
        {"method": "prior", "w_d": 0.0, "w_c": 2.5, "control_top1": 0.9, "fd_openmoji": 40.0},
        {"method": "prior", "w_d": 0.0, "w_c": 5.0, "control_top1": 1.0, "fd_openmoji": 1.0},  # never chosen
        {"method": "ours-bands", "w_d": 4.0, "w_c": 6.0, "control_top1": 0.85, "fd_openmoji": 17.0}]
    choice = T.choose(rows, GOAL)
    assert choice.reference["method"] == "prior" and choice.reference["control_top1"] == 0.9  # needs >= 0.81
    assert (choice.chosen["method"], choice.chosen["w_d"], choice.chosen["w_c"]) == ("ours-bands", 4.0, 6.0)
    assert T.form_of(choice.chosen) == "domain-text-bands" and T.form_of(rows[0]) == "domain-text"
    assert T.form_of({"w_d": 1}) == "decoupled"  # an unnamed row: Eq. A
    assert not any(r["feasible"] for r in choice.rows if r["method"] == "prior")
    # without the bands row the best that keeps 0.81 is domain-text (0, 5)... at fd 31 > (1, 2.5)'s 22? no: 0.76 < 0.81
    assert (T.choose(rows[:-1], GOAL).chosen["w_d"], T.choose(rows[:-1], GOAL).chosen["w_c"]) == (0, 5.0)


def test_split_prompts_is_deterministic_disjoint_and_order_free():
    prompts = [f"prompt {i}" for i in range(20)]
    probe, held = T.split_prompts(prompts, 6, 10, seed=0)
    assert len(probe) == 6 and len(held) == 10 and not set(probe) & set(held)
    assert T.split_prompts(prompts[::-1] + prompts[:3], 6, 10, seed=0) == (probe, held)  # order and duplicates
    assert T.split_prompts(prompts, 6, 10, seed=1) != (probe, held)
    assert T.split_prompts(prompts[:3], 24, 48) == (T.split_prompts(prompts[:3], 2, 1))  # at least one held out
    with pytest.raises(ValueError, match="at least 2 distinct"):
        T.split_prompts(["a", "a"], 1, 1)


def test_binomial_standard_error():
    assert T.binomial_se(0.5, 100) == pytest.approx(0.05)
    assert T.binomial_se(1.0, 48) == 0.0 and math.isnan(T.binomial_se(math.nan, 48))


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny prior, its calibrated null-text domain model, a folder of random 'real' images, a tiny CLIP."""
    root = tmp_path_factory.mktemp("tune-world")
    torch.set_num_threads(1)
    prior = save_tiny_prior(root / "prior")
    pipe = InDomainPipeline.from_pretrained(prior)
    null = pipe.encode_text([""], torch.device("cpu"))
    NullTextUNet.from_prior(pipe.unet, null, prior=str(prior)).save_pretrained(root / "domain")
    real = root / "real"
    real.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(real / f"{i}.png")
    return {"prior": prior, "domain": root / "domain", "real": real, "clip": save_tiny_clip(root / "clip")}


def base_args(world: dict[str, Path], out: Path) -> list[str]:
    return ["tune", "--prior", str(world["prior"]), "--domain", str(world["domain"]), "--out", str(out),
            "--prompts", "a cat", "a dog", "a red hat", "--num-probe-prompts", "2", "--domain-scales", "0", "2.5",
            "--guidance-scales", "2.5", "--num-images", "4", "--steps", "2", "--batch-size", "4",
            "--clip-model", str(world["clip"]), "--real", str(world["real"]), "--extractor", "random-conv:0",
            "--metrics", "fid", "--resolution", "32", "--no-stats-cache", "--no-store", "-q"]


def test_tune_command_chooses_validates_and_writes_its_outputs(world, tmp_path, capsys):
    out = tmp_path / "tune"
    assert cli.main(base_args(world, out) + ["--keep", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "chose domain-text" in printed and "stored" not in printed  # auto: the domain-side forms on an SD prior
    assert {"probe", "validation", "tune.json", "tune.md", "tune.png"} <= {p.name for p in out.iterdir()}
    for written in [out / "tune.json", *out.rglob("results.json"), *out.rglob("settings.json")]:  # strict JSON
        json.loads(written.read_text(), parse_constant=lambda word: pytest.fail(f"{written} holds {word}"))
    record = json.loads((out / "tune.json").read_text())
    # real-SD defaults: CLIP score for control, FID for fidelity (lower is better)
    assert record["goal"] == {"control": "clip_score", "fidelity": "fid", "keep": 0.5,
                              "fidelity_higher_is_better": False, "reference_w_c": 2.5}
    table = record["probe"]["table"]
    # under domain-text, w_d = 0 is not the prior: the prior's reference runs as its own method
    assert [(s["method"], s["w_d"], s["w_c"]) for s in table] == [
        ("ours-dt", 0, 2.5), ("ours-dt", 2.5, 2.5), ("ours-bands", 0, 2.5), ("ours-bands", 2.5, 2.5), ("prior", 0, 2.5)]
    assert record["guidance_forms"] == ["domain-text", "domain-text-bands"] and record["stored"] is None
    assert not (world["domain"] / "tuned_guidance.json").exists()
    assert len(record["probe"]["prompts"]) == 2 and len(record["validation"]["prompts"]) == 1
    choice = record["choice"]
    feasible = [s for s in table if s["feasible"]]
    assert all(s["method"] != "prior" for s in feasible) and choice["guidance_form"].startswith("domain-text")
    assert (choice["w_d"], choice["w_c"]) == min(((s["fidelity"], -s["control"], s["w_d"], s["w_c"]) for s in feasible))[2:]
    v = record["validation"]
    assert {r["setting"] for r in v["rows"]} >= {choice["setting"]}
    kept = v["measured"]["kept"]  # null when it is NaN (strict JSON)
    assert v["constraint_held"] == (kept is not None and kept >= 0.5)
    assert v["predicted"]["fidelity"] == pytest.approx(choice["fidelity"])
    assert v["measured"]["control_se"] is None  # CLIP score is no share: no binomial SE (NaN, written as null)
    for phase in ("probe", "validation"):
        assert (out / phase / "results.csv").is_file() and (out / phase / "report.html").is_file()
    md = (out / "tune.md").read_text()
    assert f"Chosen: {choice['guidance_form']}, w_d = " in md and "held out (measured)" in md and "probe (predicted)" in md
    with Image.open(out / "tune.png") as im:
        assert im.size[0] > 300

    # a second run into the same folder is refused; --overwrite replaces it
    assert cli.main(base_args(world, out)) == 2
    assert "already holds a run of `indomain tune`" in capsys.readouterr().err


def test_tune_says_when_no_setting_meets_the_goal_and_reports_the_best(world, tmp_path, capsys):
    out = tmp_path / "strict"
    assert cli.main(base_args(world, out) + ["--keep", "5"]) == 2
    err = capsys.readouterr().err
    assert "error: no setting of the probe grid keeps 5 of the prior's clip_score" in err and "closest is" in err
    record = json.loads((out / "tune.json").read_text())
    assert record["choice"] is None and record["best_available"]["w_d"] in (0, 2.5)
    assert not (out / "validation").exists()
    assert "No setting meets the goal" in (out / "tune.md").read_text() and (out / "tune.png").is_file()


def test_tune_with_a_stand_in_scorer_reports_binomial_errors(world, tmp_path):
    def scorer(images: list[Image.Image], prompts: list[str | None]) -> dict[str, float]:
        arrays = [np.asarray(im, dtype=np.float64) / 255 for im in images]
        return {"bright": float(np.mean([a.mean() for a in arrays])),
                "redness": float(np.mean([a[..., 0].mean() for a in arrays]))}

    preset = T.TunePreset(scorer, control="bright", fidelity="redness", fidelity_higher_is_better=True,
                          share_columns=("bright",), probe_prompts=["a cat", "a dog"], validation_prompts=["a hat"])
    config = T.TuneConfig(prior=str(world["prior"]), domain=str(world["domain"]), out=str(tmp_path / "t"),
                          domain_guidance_scales=[1.0, 2.5], guidance_scales=[2.5], keep=0.01, num_images=4,
                          guidance_forms=["decoupled"], store=False)
    protocol = T.EvalConfig(out=config.out, steps=2, batch_size=4)
    result = T.tune(config, protocol, preset=preset)
    # the grid lacks w_d = 0: the prior's reference is added as its own method
    assert {(r["method"], r["w_d"]) for r in result.choice.rows} == {("ours", 1.0), ("ours", 2.5), ("prior", 0.0)}
    chosen = result.choice.chosen
    assert chosen["redness"] == max(r["redness"] for r in result.choice.rows)  # higher is better here
    m = result.validation["measured"]
    assert m["control_se"] == pytest.approx(T.binomial_se(m["control"], 4))
    assert {r["method"] for r in result.validation["rows"]} == {"ours", "prior"}


def test_bad_goals_and_prompts_fail_before_any_work(world, tmp_path, capsys):
    out = tmp_path / "bad"
    prior = ["tune", "--prior", str(world["prior"]), "--domain", str(world["domain"]), "--out", str(out)]
    cases = [
        (["--prompts", "a", "b"], "--control control_top1 is no column"),  # no scorer, no CLIP: nothing to measure
        (["--prompts", "a", "b", "--clip-model", str(world["clip"])], "--fidelity fd_openmoji is no column"),
        (["--prompts", "a", "b", "--clip-model", str(world["clip"]), "--fidelity", "fid"], "--fidelity fid needs --real"),
        (["--clip-model", str(world["clip"]), "--real", str(world["real"]), "--extractor", "random-conv:0"],
         "pass probe and validation prompts"),
        (["--probe-prompts", "a", "b", "--validation-prompts", "b", "--clip-model", str(world["clip"]), "--real",
          str(world["real"]), "--extractor", "random-conv:0"], "must be held out from the probe"),
        (["--prompts", "a", "b", "--scorer", "nope"], None),  # argparse: not a known scorer
    ]
    for extra, message in cases:
        if message is None:
            with pytest.raises(SystemExit):
                cli.main(prior + extra)
            assert "invalid choice: 'nope'" in capsys.readouterr().err
            continue
        assert cli.main(prior + extra) == 2, extra
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_dry_run_prints_the_resolved_run(world, tmp_path, capsys):
    argv = base_args(world, tmp_path / "dry") + ["--dry-run"]
    assert cli.main(argv) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["goal"]["control"] == "clip_score" and resolved["protocol"]["steps"] == 2
    assert len(resolved["probe_prompts"]) == 2 and not (tmp_path / "dry").exists()


def test_tune_stores_its_choice_with_the_domain_model_and_generate_samples_with_it(world, tmp_path, capsys):
    import shutil

    domain = tmp_path / "domain"
    shutil.copytree(world["domain"], domain)
    args = [a if a != str(world["domain"]) else str(domain) for a in base_args(world, tmp_path / "t") if a != "--no-store"]
    assert cli.main(args + ["--keep", "0.5", "--guidance-forms", "domain-text-bands"]) == 0
    assert f"stored with the domain model in {domain / 'tuned_guidance.json'}" in capsys.readouterr().out
    record = json.loads((tmp_path / "t" / "tune.json").read_text())
    stored = json.loads((domain / "tuned_guidance.json").read_text())
    choice = record["choice"]
    assert record["stored"] == str(domain / "tuned_guidance.json")
    assert (stored["guidance_form"], stored["domain_guidance_scale"], stored["guidance_scale"]) == (
        "domain-text-bands", choice["w_d"], choice["w_c"])
    assert stored["layout_guidance_scale"] == 1.0 and stored["chosen_by"] == "indomain tune"
    assert stored["validation"]["constraint_held"] == record["validation"]["constraint_held"]

    gen = ["generate", "--prior", str(world["prior"]), "--domain", str(domain), "--prompt", "a cat", "--num-images", "2",
           "--steps", "2", "--height", "32", "--width", "32", "-q"]

    def run(name: str, *extra: str) -> tuple[dict, list[np.ndarray]]:
        assert cli.main(gen + ["--out", str(tmp_path / name), *extra]) == 0
        record = json.loads((tmp_path / name / "settings.json").read_text())
        images = [np.asarray(Image.open(tmp_path / name / f["file"])) for f in record["images"]]
        return record, images

    # only --domain and a prompt: the stored form and weights, recorded in settings.json
    used, images = run("stored")
    assert (used["settings"]["guidance_form"], used["settings"]["domain_guidance_scale"],
            used["settings"]["guidance_scale"]) == ("domain-text-bands", choice["w_d"], choice["w_c"])
    assert used["resolved"]["tuned_guidance"]["path"] == str(domain / "tuned_guidance.json")
    _, explicit = run("explicit", "--guidance-form", "domain-text-bands", "--domain-guidance-scale", str(choice["w_d"]),
                      "--guidance-scale", str(choice["w_c"]))
    assert all(np.array_equal(a, b) for a, b in zip(images, explicit))
    # a flag wins over the stored value; another form asked for takes that form's defaults
    overridden, _ = run("override", "--guidance-scale", "7")
    assert overridden["settings"]["guidance_scale"] == 7 and overridden["settings"]["guidance_form"] == "domain-text-bands"
    other, _ = run("other", "--guidance-form", "decoupled")
    assert "tuned_guidance" not in other["resolved"] and other["settings"]["domain_guidance_scale"] == 2.5
    # a broken record is an error that names it, not a silent default
    (domain / "tuned_guidance.json").write_text('{"guidance_form": "sideways"}')
    assert cli.main(gen + ["--out", str(tmp_path / "broken")]) == 2
    assert "tuned_guidance.json: not a tuned guidance record" in capsys.readouterr().err
    assert not (tmp_path / "broken").exists()  # checked before --out is claimed


def test_auto_probes_the_domain_side_forms_on_sd_and_eq_a_elsewhere(world, tmp_path):
    sdxl = save_tiny_prior(tmp_path / "sdxl", family="sdxl")
    config = T.TuneConfig(prior=str(world["prior"]), domain="d", out="o")
    assert T.resolve_forms(config) == ["domain-text", "domain-text-bands"]
    assert T.resolve_forms(dataclasses.replace(config, prior=str(sdxl))) == ["decoupled"]
    assert T.resolve_forms(dataclasses.replace(config, guidance_forms=["decoupled", "auto", "decoupled"])) == [
        "decoupled", "domain-text", "domain-text-bands"]


def test_the_emoji_scorers_name_every_domain_of_the_world():
    from indomain.world.domains import DOMAINS

    assert set(cli.EMOJI_DERIVED_DOMAINS) == set(DOMAINS) - {"openmoji"}


def test_the_emoji_probe_is_held_out_and_never_the_benchmarks_scored_prompts():
    from indomain.world.benchmark import PROTOCOL_PROMPTS
    from indomain.world.render import evenly_spaced, list_emoji, split_emoji
    from indomain.world.tuning import emoji_preset

    config = T.TuneConfig(prior="p", domain="d", out="o")
    preset = emoji_preset(config, "sticker")
    seen, held_out = split_emoji(list_emoji(), seed=config.seed)
    scored = {e.name for e in evenly_spaced(held_out, PROTOCOL_PROMPTS)}
    probe, validation = set(preset.probe_prompts), set(preset.validation_prompts)
    assert len(probe) == config.num_probe_prompts and len(validation) == config.num_validation_prompts
    assert probe <= {e.name for e in held_out} and not probe & {e.name for e in seen}
    assert not probe & scored and not probe & validation
    assert preset.fidelity == "fd_sticker"
