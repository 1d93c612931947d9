import json
import subprocess
import sys

import pytest

from indomain.cli import main
from indomain.nulltext import NullTextUNet
from indomain.schedulers import SCHEDULERS, make_scheduler, scheduler_table
from indomain.testing import save_tiny_prior, tiny_scheduler


@pytest.fixture(scope="module")
def prior_and_domain(tmp_path_factory):
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("cli")
    prior = save_tiny_prior(root / "prior")
    tok = CLIPTokenizer.from_pretrained(prior / "tokenizer")
    te = CLIPTextModel.from_pretrained(prior / "text_encoder")
    with torch.no_grad():
        null = te(tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    NullTextUNet.from_prior(UNet2DConditionModel.from_pretrained(prior / "unet"), null).save_pretrained(root / "domain")
    return prior, root / "domain"


def test_generate_writes_pngs_grid_and_settings(prior_and_domain, tmp_path):
    prior, domain = prior_and_domain
    rc = main(["generate", "--prior", str(prior), "--domain", str(domain), "--prompt", "a cat", "--prompt", "a dog",
               "--num-images", "2", "--steps", "2", "--seed", "5", "--scheduler", "ddim", "--out", str(tmp_path)])
    assert rc == 0
    pngs = sorted(p.name for p in tmp_path.glob("p*.png"))
    assert pngs == ["p00_seed000005.png", "p00_seed000006.png", "p01_seed000007.png", "p01_seed000008.png"]
    assert (tmp_path / "grid.png").is_file()
    record = json.loads((tmp_path / "settings.json").read_text())
    # the default form for a null-text domain model on an SD prior is domain-text, at its default weights (issue #24)
    assert record["settings"]["guidance_form"] == "domain-text" and record["settings"]["domain_scale"] == 4.0
    assert record["settings"]["guidance_scale"] == 2.5 and record["settings"]["scheduler"] == "ddim"
    assert record["resolved"]["scheduler"]["_class_name"] == "DDIMScheduler"
    assert [i["seed"] for i in record["images"]] == [5, 6, 7, 8]
    assert "torch" in record["environment"]
    assert record["settings"]["domain_every"] == 1


def test_domain_every_changes_the_images_and_is_recorded(prior_and_domain, tmp_path):
    prior, domain = prior_and_domain
    common = ["generate", "--prior", str(prior), "--domain", str(domain), "--steps", "4", "--scheduler", "ddim"]
    assert main(common + ["--guidance-form", "decoupled", "--out", str(tmp_path / "exact")]) == 0
    assert main(common + ["--domain-every", "2", "--out", str(tmp_path / "fast")]) == 0
    fast = json.loads((tmp_path / "fast" / "settings.json").read_text())["settings"]
    assert fast["domain_every"] == 2 and fast["guidance_form"] == "decoupled"  # an approximation of Eq. A: auto picks it
    exact, fast = ((tmp_path / d / "p00_seed000000.png").read_bytes() for d in ("exact", "fast"))
    assert exact != fast


def test_guidance_form_decoupled_keeps_the_paper_weights_and_changes_the_images(prior_and_domain, tmp_path):
    prior, domain = prior_and_domain
    common = ["generate", "--prior", str(prior), "--domain", str(domain), "--prompt", "a cat", "--num-images", "1",
              "--steps", "2", "--scheduler", "ddim"]
    assert main(common + ["--out", str(tmp_path / "auto")]) == 0
    assert main(common + ["--guidance-form", "decoupled", "--out", str(tmp_path / "eq_a")]) == 0
    assert main(common + ["--guidance-form", "domain-text", "--domain-scale", "2.5", "--out", str(tmp_path / "dt")]) == 0
    settings = {d: json.loads((tmp_path / d / "settings.json").read_text())["settings"] for d in ("auto", "eq_a", "dt")}
    assert settings["eq_a"]["guidance_form"] == "decoupled" and settings["eq_a"]["domain_scale"] == 2.5
    assert settings["dt"]["guidance_form"] == "domain-text" and settings["dt"]["domain_scale"] == 2.5  # as given
    images = {d: (tmp_path / d / "p00_seed000000.png").read_bytes() for d in ("auto", "eq_a", "dt")}
    # this domain model is an untrained copy of the prior: with the prior's text put back it is the prior, so domain-text
    # is plain CFG at any w_d (auto at 4 == domain-text at 2.5), while Eq. A's constant cross-attention is not
    assert images["auto"] == images["dt"] and images["eq_a"] != images["auto"]


def test_guidance_form_domain_text_bands_has_its_own_defaults_and_reduces_to_domain_text(prior_and_domain, tmp_path):
    prior, domain = prior_and_domain
    common = ["generate", "--prior", str(prior), "--domain", str(domain), "--prompt", "a cat", "--num-images", "1",
              "--steps", "2", "--scheduler", "ddim"]
    assert main(common + ["--guidance-form", "domain-text-bands", "--out", str(tmp_path / "bands")]) == 0
    assert main(common + ["--guidance-form", "domain-text-bands", "--guidance-scale", "2.5", "--layout-guidance-scale",
                          "2.5", "--out", str(tmp_path / "same")]) == 0
    assert main(common + ["--guidance-form", "domain-text", "--out", str(tmp_path / "dt")]) == 0
    settings = json.loads((tmp_path / "bands" / "settings.json").read_text())["settings"]
    assert settings["guidance_form"] == "domain-text-bands"
    assert (settings["domain_guidance_scale"], settings["guidance_scale"]) == (4.0, 6.0)  # the form's default weights
    assert (settings["layout_guidance_scale"], settings["layout_sigma"]) == (1.0, 0.1875)
    images = {d: (tmp_path / d / "p00_seed000000.png").read_bytes() for d in ("bands", "same", "dt")}
    assert images["same"] == images["dt"]  # w_l = w_c is domain-text


def test_same_seed_same_image_regardless_of_batch(prior_and_domain, tmp_path):
    prior, domain = prior_and_domain
    common = ["generate", "--prior", str(prior), "--domain", str(domain), "--steps", "2", "--scheduler", "ddim"]
    main(common + ["--num-images", "3", "--seed", "0", "--out", str(tmp_path / "a")])
    main(common + ["--num-images", "1", "--seed", "1", "--out", str(tmp_path / "b")])
    assert (tmp_path / "a" / "p00_seed000001.png").read_bytes() == (tmp_path / "b" / "p00_seed000001.png").read_bytes()


def test_unknown_scheduler_is_named(prior_and_domain, tmp_path, capsys):
    prior, domain = prior_and_domain
    rc = main(["generate", "--prior", str(prior), "--domain", str(domain), "--scheduler", "warp9", "--out", str(tmp_path)])
    assert rc == 2 and "unknown scheduler 'warp9'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="dpm\\+\\+"):
        make_scheduler("nope", tiny_scheduler().config)


def test_every_named_scheduler_builds_from_the_prior_config():
    assert ("auto", *scheduler_table()) == SCHEDULERS  # the names --help lists without importing diffusers
    config = tiny_scheduler().config
    for name in SCHEDULERS:
        if name == "flow-euler":  # for flow-matching priors (tests/test_families.py)
            continue
        sched = make_scheduler(name, config)
        assert sched.config.num_train_timesteps == 1000 and sched.config.beta_schedule == "scaled_linear"


def test_domain_scale_without_domain_is_an_error(prior_and_domain, tmp_path, capsys):
    prior, _ = prior_and_domain
    assert main(["generate", "--prior", str(prior), "--out", str(tmp_path / "g")]) == 2
    assert "--domain" in capsys.readouterr().err and not (tmp_path / "g").exists()  # refused before writing


def test_bad_weighted_prompt_and_help():
    with pytest.raises(SystemExit):
        main(["generate", "--prior", "x", "--out", "y", "--weighted-prompt", "no-weight"])
    out = subprocess.run([sys.executable, "-m", "indomain.cli", "generate", "--help"], capture_output=True, text=True).stdout
    for flag in ["--prior", "--domain", "--prompt", "--domain-scale", "--guidance-scale", "--seed", "--steps", "--scheduler", "--num-images", "--out"]:
        assert flag in out
    out = subprocess.run([sys.executable, "-m", "indomain.cli", "train", "--help"], capture_output=True, text=True).stdout
    assert "--lora-rank" in out and "--resume" in out


def test_convert_pickle_folder_to_safetensors(prior_and_domain, tmp_path):
    _, domain = prior_and_domain
    m = NullTextUNet.from_pretrained(domain)
    m.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert main(["convert", str(tmp_path / "pickled"), str(tmp_path / "safe")]) == 0
    assert (tmp_path / "safe" / "diffusion_pytorch_model.safetensors").is_file()


# -- one source for each config: every field is an option, and the options read back into the dataclass ----------


def _subcommand(*names):
    from indomain.cli import build_parser

    parser = build_parser()
    for name in names:
        parser = next(a for a in parser._actions if a.dest in ("command", "world_command")).choices[name]
    return parser


def _config_classes():
    from indomain.cli import ConvertConfig
    from indomain.cliargs import DryRun
    from indomain.demo import DemoConfig
    from indomain.evaluate import EvalCommand, EvalConfig, ExtractorConfig, MethodFlags, Sweep
    from indomain.export import ExportConfig
    from indomain.generate import EditConfig, GenerateConfig
    from indomain.train import TrainConfig
    from indomain.tune import TuneCommand, TuneConfig
    from indomain.ui import UIConfig
    from indomain.world.benchmark import BenchmarkCommand, BenchmarkConfig
    from indomain.world.cli import ControlNetConfig, EvaluatorTrainingConfig, RenderConfig, SanityConfig
    from indomain.world.prior import PriorConfig

    return [(("train",), TrainConfig), (("evaluate",), EvalConfig), (("evaluate",), MethodFlags), (("evaluate",), Sweep),
            (("evaluate",), ExtractorConfig), (("evaluate",), EvalCommand), (("world", "benchmark"), BenchmarkConfig),
            (("world", "train-prior"), PriorConfig), (("tune",), TuneConfig), (("tune",), ExtractorConfig),
            (("generate",), GenerateConfig), (("edit",), EditConfig), (("convert",), ConvertConfig),
            (("export",), ExportConfig), (("demo",), DemoConfig), (("ui",), UIConfig),
            (("world", "render"), RenderConfig), (("world", "evaluator-sanity"), SanityConfig),
            (("world", "train-controlnet"), ControlNetConfig), (("world", "train-evaluators"), EvaluatorTrainingConfig),
            (("train",), DryRun), (("distill",), DryRun), (("3d",), DryRun), (("tune",), TuneCommand),
            (("world", "benchmark"), BenchmarkCommand)]


@pytest.mark.parametrize("command,cls", _config_classes(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_config_field_is_an_option_with_help(command, cls):
    import dataclasses

    actions = {a.dest: a for a in _subcommand(*command)._actions}
    for f in dataclasses.fields(cls):
        assert f.name in actions, f"{cls.__name__}.{f.name} has no option in `indomain {' '.join(command)}`"
        assert actions[f.name].help, f.name
    for a in actions.values():
        assert a.help, a.dest


def _dry_run(capsys, *argv):
    assert main(["train", "--prior", "p", "--images", "i", "--output", "o", "--dry-run", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_train_options_keep_their_spelling_and_the_learning_rate_has_one_rule(capsys):
    from indomain.train import TrainConfig

    config = _dry_run(capsys)
    assert config["learning_rate"] == 1e-5 and config["center_crop"] and config["random_flip"] and config["use_ema"]
    assert _dry_run(capsys, "--lora-rank", "4")["learning_rate"] == 1e-4
    assert _dry_run(capsys, "--lora-rank", "4", "--learning-rate", "3e-4")["learning_rate"] == 3e-4
    assert TrainConfig(prior="p", images="i", output="o").learning_rate == 1e-5  # the Python API follows the same rule
    assert TrainConfig(prior="p", images="i", output="o", lora_rank=4).learning_rate == 1e-4
    config = _dry_run(capsys, "--random-crop", "--no-flip", "--no-ema", "--validation-prompts", "a", "b",
                      "--adam-beta1", "0.8", "--guidance-scale", "-1", "--latent-cache", "c", "--log-every", "3")
    assert not (config["center_crop"] or config["random_flip"] or config["use_ema"])
    assert config["validation_prompts"] == ["a", "b"] and config["adam_beta1"] == 0.8 and config["guidance_scale"] == -1
    assert config["latent_cache"] == "c" and config["log_every"] == 3
    with pytest.raises(SystemExit):
        main(["train", "--prior", "p", "--images", "i", "--output", "o", "--log-every", "0"])
    assert "--log-every" in capsys.readouterr().err


def test_demo_options_default_to_the_benchmark_demo_preset():
    from indomain.demo import DEMO_OPTIONS
    from indomain.world.benchmark import BenchmarkConfig

    args, preset = _subcommand("demo").parse_args([]), BenchmarkConfig.demo(prior="p", out="o")
    assert {name: getattr(args, name) for name in DEMO_OPTIONS} == {name: getattr(preset, name) for name in DEMO_OPTIONS}
    assert preset.train_steps < BenchmarkConfig(prior="p", out="o").train_steps  # the demo is the shorter run


def test_evaluate_dry_run_prints_the_resolved_run_and_writes_nothing(tmp_path, capsys):
    prompts, out = tmp_path / "prompts.txt", tmp_path / "eval"
    prompts.write_text("a cat\n\na dog\n")
    assert main(["evaluate", "--prior", "p", "--domain", "d", "--prompts-file", str(prompts), "--clip-text", "cat", "dog",
                 "--no-stats-cache", "--metrics", "kid", "--out", str(out), "--dry-run"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["config"]["prompts"] == ["a cat", "a dog"] and run["config"]["clip_texts"] == ["cat", "dog"]
    assert run["config"]["use_stats_cache"] is False and run["config"]["metrics"] == ["kid"]
    assert run["methods"][0]["name"] == "ours" and run["sweep"] == {"domain_guidance_scales": [2.5], "guidance_scales": [2.5]}
    assert run["extractor"] == {"inception_weights": None, "inception_resize": "antialias", "random_conv_seed": None}
    assert not out.exists()


def _tiny_lora(folder, **unet_overrides):
    import torch
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from indomain.testing import tiny_unet

    unet = tiny_unet(**unet_overrides)
    torch.manual_seed(11)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v"]))
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)), safe_serialization=True)
    return str(folder)


def test_generate_control_flags(prior_and_domain, tmp_path, capsys):
    """#11 §3: multi-ControlNet, LoRA with a pristine ∅, a customised control model and two weighted domains in one
    run; then the errors when pieces do not fit."""
    import numpy as np
    import PIL.Image
    from diffusers import ControlNetModel, UNet2DConditionModel

    from indomain.testing import tiny_unet

    prior, domain = prior_and_domain
    unet = UNet2DConditionModel.from_pretrained(prior / "unet")
    for i in (1, 2):
        ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)).save_pretrained(tmp_path / f"cn{i}")
        PIL.Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"c{i}.png")
    tiny_unet(seed=7).save_pretrained(tmp_path / "custom")
    lora = _tiny_lora(tmp_path / "lora")
    base = ["generate", "--prior", str(prior), "--steps", "2", "--num-images", "1", "--scheduler", "ddim"]
    control = ["--controlnet", str(tmp_path / "cn1"), "--control-image", str(tmp_path / "c1.png"),
               "--controlnet", str(tmp_path / "cn2"), "--control-image", str(tmp_path / "c2.png"),
               "--control-scale", "0.8", "--control-scale", "1.2"]
    rc = main(base + control + ["--prompt", "a cat", "--domain", f"{domain}:1.5", "--domain", f"{domain}:0.5",
                                "--lora", lora, "--lora-uncond", "prior", "--control-model", str(tmp_path / "custom"),
                                "--out", str(tmp_path / "ok")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "ok" / "p00_seed000000.png").is_file()
    assert json.loads((tmp_path / "ok" / "settings.json").read_text())["settings"]["domain_scale"] == 1.5

    wide = tiny_unet(block_out_channels=(64, 128))
    ControlNetModel.from_unet(wide, conditioning_embedding_out_channels=(16, 32)).save_pretrained(tmp_path / "wide_cn")
    wide.save_pretrained(tmp_path / "wide_unet")
    wide_lora = _tiny_lora(tmp_path / "wide_lora", block_out_channels=(64, 128))
    one = ["--domain-scale", "0", "--controlnet", str(tmp_path / "cn1"), "--control-image", str(tmp_path / "c1.png")]
    cases = {
        "controlnet does not fit this prior: its block_out_channels": base + ["--domain-scale", "0", "--controlnet",
            str(tmp_path / "wide_cn"), "--control-image", str(tmp_path / "c1.png")],
        "2 --controlnet but 1 --control-image": base + control[:6] + ["--domain-scale", "0"],
        "--control-image needs a --controlnet": base + ["--domain-scale", "0", "--control-image", str(tmp_path / "c1.png")],
        "--lora .* does not fit this prior": base + one + ["--lora", wide_lora],
        "control_unet does not fit this prior": base + one + ["--control-model", str(tmp_path / "wide_unet")],
        "--controlnet .*not a model folder": base + ["--domain-scale", "0", "--controlnet", str(tmp_path),
                                                    "--control-image", str(tmp_path / "c1.png")],
    }
    for i, (message, argv) in enumerate(cases.items()):
        assert main(argv + ["--out", str(tmp_path / f"bad{i}")]) == 2, message
        err = capsys.readouterr().err
        assert __import__("re").search(message, err), (message, err)
        assert "Traceback" not in err


def test_generate_with_an_ip_adapter(prior_and_domain, tmp_path, capsys):
    """--ip-adapter FILE (diffusers' safetensors layout, image_encoder/ beside it) with --ip-image."""
    import numpy as np
    import PIL.Image
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    prior, domain = prior_and_domain
    unet = UNet2DConditionModel.from_pretrained(prior / "unet")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, projection_dim=32, image_size=32, patch_size=8,
                                                   num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
                                  ).save_pretrained(tmp_path / "ip" / "image_encoder")
    dim = unet.config.cross_attention_dim
    weights = {"image_proj.proj.weight": torch.randn(4 * dim, 32) * 0.2, "image_proj.proj.bias": torch.zeros(4 * dim),
               "image_proj.norm.weight": torch.ones(dim), "image_proj.norm.bias": torch.zeros(dim)}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            shape = unet.get_submodule(name[: -len(".processor")]).to_k.weight.shape
            weights[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(shape) * 0.2
            weights[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(shape) * 0.2
            key += 2
    save_file(weights, tmp_path / "ip" / "ip-adapter.safetensors")
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "face.png")
    base = ["generate", "--prior", str(prior), "--domain", str(domain), "--steps", "2", "--num-images", "1",
            "--scheduler", "ddim", "--prompt", "a cat"]
    rc = main(base + ["--ip-adapter", str(tmp_path / "ip" / "ip-adapter.safetensors"), "--ip-image", str(tmp_path / "face.png"),
                      "--ip-scale", "0.7", "--out", str(tmp_path / "ok")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "ok" / "p00_seed000000.png").is_file()
    assert main(base + ["--ip-image", str(tmp_path / "face.png"), "--out", str(tmp_path / "bad")]) == 2
    assert "--ip-adapter and --ip-image go together" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["generate", "train", "tune", "world", "3d", "convert"])
def test_a_command_gets_its_one_line_of_help_from_its_config(name):
    """A command's help line lives on its config (cli.COMMANDS names it): the lazily listed and the fully built parser
    agree with it."""
    import argparse

    from indomain.cli import COMMANDS, build_parser, command_help

    def help_of(parser: argparse.ArgumentParser) -> str:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return next(c.help for c in sub._choices_actions if c.dest == name)

    assert help_of(build_parser([name])) == help_of(build_parser(["demo"])) == command_help(name)
    module, _, config = COMMANDS[name][0].partition(":")
    if config:  # a command's line is its config's; `world` (a group) keeps it on its module
        import importlib

        assert command_help(name) == getattr(importlib.import_module(f"indomain.{module}"), config).command_help


# -- generate, edit and convert are config dataclasses too; w_d has one name, its old flags are aliases ------------


def _argv(config):
    """The command line of ``config``: every field that is set (an appending option repeated per item)."""
    import dataclasses

    argv = []
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), f.metadata
        flag = meta.get("flag") or "--" + ("no-" if f.default is True else "") + f.name.replace("_", "-")
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        items = [":".join(str(x) for x in v if x is not None) if isinstance(v, tuple) else str(v) for v in items]
        if meta.get("positional"):
            argv += items
        elif isinstance(value, bool):
            argv += [flag] if value != f.default else []
        elif value is not None:
            argv += [a for item in items for a in (flag, item)] if meta.get("action") == "append" else [flag, *items]
    return argv


def _generate_edit_convert_configs():
    from indomain.cli import ConvertConfig
    from indomain.generate import EditConfig, GenerateConfig

    shared = dict(prior="p", prior_config="pc", domain=[("d1", None), ("d2", 0.5)], negative_prompt="ugly",
                  weighted_prompt=[("blurry", -1.5), ("sharp", 0.5)], domain_guidance_scale=3.0, guidance_scale=-1.0,
                  steps=3, scheduler="ddim", seed=7, device="cpu", dtype="float16", allow_pickle=True, out="o",
                  overwrite=True, json=True)
    return [
        ("generate", GenerateConfig(**shared, prompt=["a cat", "a dog"], num_images=2, height=64, width=48,
                                    domain_every=2, guidance_form="decoupled", distilled=["s"], share_base=True,
                                    controlnet=["c1", "c2"], controlnet_config=["cc"], adapter="a",
                                    control_image=["i1", "i2"], control_scale=[0.5, 1.5], control_to_domain=False,
                                    ip_adapter="ip.bin", ip_image="ip.png", ip_scale=0.7, lora="l",
                                    lora_uncond="prior", control_model="m", control_model_config="mc")),
        ("generate", GenerateConfig(prior="p", out="o")),  # the defaults
        ("edit", EditConfig(**shared, image="x.png", prompt="a cat", strength=0.3, method="invert", mask="m.png")),
        ("edit", EditConfig(prior="p", out="o", image="x.png")),
        ("convert", ConvertConfig(src="a", dst="b")),
    ]


@pytest.mark.parametrize("command,config", _generate_edit_convert_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_generate_edit_convert_configs_round_trip_through_their_parsers(command, config):
    from indomain.cli import build_parser
    from indomain.cliargs import from_args

    argv = [command, *_argv(config)]
    assert from_args(type(config), build_parser(argv).parse_args(argv)) == config


def _other_command_configs():
    from indomain.demo import DemoConfig
    from indomain.evaluate import EvalCommand, EvalConfig, ExtractorConfig, MethodFlags, Sweep
    from indomain.export import ExportConfig
    from indomain.cliargs import DryRun
    from indomain.tune import TuneCommand
    from indomain.ui import UIConfig
    from indomain.world.benchmark import BenchmarkCommand
    from indomain.world.cli import EvaluatorTrainingConfig

    return [
        (["tune", "--prior", "p", "--domain", "d", "--out", "o"],
         [TuneCommand(prompts_file="a", probe_prompts_file="b", validation_prompts_file="c", dry_run=True)]),
        (["tune", "--prior", "p", "--domain", "d", "--out", "o"], [TuneCommand()]),
        (["world", "benchmark", "--prior", "p", "--out", "o"], [BenchmarkCommand(no_evaluators=True)]),
        (["train", "--prior", "p", "--images", "i", "--output", "o"], [DryRun(True)]),
        (["3d", "--prior", "p", "--prompt", "owl", "--out", "o"], [DryRun(True)]),
        (["export"], [ExportConfig(domain="d", out="o", format="kohya", prior="p", allow_pickle=True)]),
        (["export"], [ExportConfig(domain="d", out="o")]),
        (["demo"], [DemoConfig(out="o", prior="p", train_steps=5, num_prompts=2, images_per_setting=3, sample_steps=4,
                               seed=9, overwrite=True)]),
        (["demo"], [DemoConfig()]),
        (["ui"], [UIConfig(prior="p", domain=["d1", "d2"], controlnet="c", host="0.0.0.0", port=8000, data_root="r",
                           out="u", device="cpu")]),
        (["ui"], [UIConfig()]),
        (["world", "train-evaluators"], [EvaluatorTrainingConfig(out="o", steps=3, batch_size=4, seed=5, validate=False,
                                                                 threads=2)]),
        (["world", "train-evaluators"], [EvaluatorTrainingConfig()]),
        (["evaluate"], [EvalConfig(out="o"), Sweep((0.0, 1.5), (-1.0,)), ExtractorConfig("w.pth", None, "legacy-tf"),
                        MethodFlags(prior="p", prior_config="pc", domain="d", unet="u", domain_prompt="x", name="n",
                                    methods="m.json", allow_pickle=True),
                        EvalCommand(prompts_file="p.txt", clip_text_file="c.txt", dry_run=True, json=True)]),
        (["evaluate"], [EvalConfig(out="o"), Sweep(), ExtractorConfig(), MethodFlags(), EvalCommand()]),
    ]


@pytest.mark.parametrize("command,configs", _other_command_configs(),
                         ids=lambda v: " ".join(v[:1 + (v[0] == "world")]) if isinstance(v[0], str) else "")
def test_the_other_commands_configs_round_trip_through_their_parsers(command, configs):
    """export, demo, ui, world train-evaluators, evaluate (its five option sets) and the flags beside a run's config
    (tune's, benchmark's, --dry-run) read back what was written."""
    from indomain.cli import build_parser
    from indomain.cliargs import from_args

    argv = [*command, *(a for config in configs for a in _argv(config))]
    args = build_parser(argv).parse_args(argv)
    for config in configs:
        assert from_args(type(config), args) == config


def test_evaluate_extractor_option_reads_its_seed_and_keeps_one_of_two():
    from indomain.cli import build_parser
    from indomain.cliargs import from_args
    from indomain.evaluate import ExtractorConfig

    argv = ["evaluate", "--out", "o", "--extractor", "random-conv:3"]
    assert from_args(ExtractorConfig, build_parser(argv).parse_args(argv)) == ExtractorConfig(extractor=3)
    with pytest.raises(SystemExit):  # still one feature network or the other
        build_parser(argv).parse_args(argv + ["--inception-weights", "w.pth"])
    with pytest.raises(SystemExit):  # and one source of prompts
        build_parser(argv).parse_args(argv + ["--prompts", "a", "--prompts-file", "p.txt"])


@pytest.mark.parametrize("argv,old,new", [
    (["generate", "--prior", "p", "--out", "o"], ["--domain-scale", "3"], ["--domain-guidance-scale", "3"]),
    (["edit", "--prior", "p", "--out", "o", "--image", "x"], ["--domain-scale", "0"], ["--domain-guidance-scale", "0"]),
    (["3d", "--prior", "p", "--prompt", "owl", "--out", "o"], ["--domain-scale", "2"], ["--domain-guidance-scale", "2"]),
    (["tune", "--prior", "p", "--domain", "d", "--out", "o"], ["--domain-scales", "0", "2"],
     ["--domain-guidance-scales", "0", "2"]),
    (["evaluate", "--prior", "p", "--out", "o"], ["--domain-scales", "1", "2"], ["--domain-guidance-scales", "1", "2"]),
    (["distill", "--prior", "p", "--domain", "d", "--images", "i", "--output", "o"], ["--domain-scale-range", "1", "4"],
     ["--domain-guidance-scale-range", "1", "4"]),
    (["world", "benchmark", "--prior", "p", "--out", "o"], ["--domain-scales", "0", "2.5"],
     ["--domain-guidance-scales", "0", "2.5"]),
], ids=lambda v: " ".join(v[:2]) if isinstance(v, list) and v[0] in ("world",) else v[0] if isinstance(v, list) else "")
def test_the_old_weight_flags_are_aliases_of_the_new(argv, old, new):
    from indomain.cli import build_parser

    parser = build_parser(argv)
    assert vars(parser.parse_args(argv + old)) == vars(parser.parse_args(argv + new))
    assert vars(parser.parse_args(argv + old)) != vars(parser.parse_args(argv))  # the alias did set the weight


def test_generate_with_the_old_flag_makes_the_same_images(prior_and_domain, tmp_path):
    prior, domain = prior_and_domain
    common = ["generate", "--prior", str(prior), "--domain", str(domain), "--prompt", "a cat", "--num-images", "1",
              "--steps", "2", "--scheduler", "ddim", "--guidance-form", "decoupled"]
    assert main(common + ["--domain-scale", "1.5", "--out", str(tmp_path / "old")]) == 0
    assert main(common + ["--domain-guidance-scale", "1.5", "--out", str(tmp_path / "new")]) == 0
    image = {d: (tmp_path / d / "p00_seed000000.png").read_bytes() for d in ("old", "new")}
    assert image["old"] == image["new"]
    settings = json.loads((tmp_path / "new" / "settings.json").read_text())["settings"]
    assert settings["domain_guidance_scale"] == settings["domain_scale"] == 1.5  # the record's older key kept
    assert main(common + ["--domain-guidance-scale", "0", "--out", str(tmp_path / "w0")]) == 0
    assert (tmp_path / "w0" / "p00_seed000000.png").read_bytes() != image["new"]  # the weight reached the pipeline


def test_an_evaluate_methods_file_with_the_older_weight_key_still_reads(tmp_path):
    from indomain.cli import build_parser
    from indomain.evaluate import methods_from_args

    methods = tmp_path / "methods.json"
    methods.write_text(json.dumps([{"name": "ours", "domain": "d", "domain_scales": [1.5]},
                                   {"name": "new", "domain": "d", "domain_guidance_scales": [2.0]}]))
    argv = ["evaluate", "--prior", "p", "--methods", str(methods), "--out", str(tmp_path / "o")]
    got = methods_from_args(build_parser(argv).parse_args(argv))
    assert [m.domain_guidance_scales for m in got] == [[1.5], [2.0]]
