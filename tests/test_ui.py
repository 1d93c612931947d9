"""`indomain ui`: paths confined to the data root, the bind warning, no gradio on import, and a real browser.

The browser test starts the app on a free local port and drives it in headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by `make test`). Without them it skips with the reason; with
``INDOMAIN_REQUIRE_BROWSER=1`` (CI: `.ci/run`) it fails instead. ``INDOMAIN_UI_SCREENSHOTS=DIR`` keeps its
screenshots there (default: the test's temporary folder).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from indomain.cli import main
from indomain.uipaths import OutsideDataRoot, confine

# ----------------------------------------------------------------------------------------------------
# Paths typed in the page stay inside --data-root


def test_paths_inside_the_data_root_are_accepted(tmp_path):
    (tmp_path / "imgs").mkdir()
    assert confine("imgs", tmp_path) == (tmp_path / "imgs").resolve()
    assert confine(str(tmp_path / "imgs"), tmp_path) == (tmp_path / "imgs").resolve()  # absolute, inside
    assert confine("new/run", tmp_path) == (tmp_path / "new" / "run").resolve()  # need not exist
    assert confine(".", tmp_path) == tmp_path.resolve()


@pytest.mark.parametrize("text", ["../x", "imgs/../../x", "..", "imgs/..", "/etc", "/etc/passwd", "~", "~/x", "", "  "])
def test_paths_that_leave_the_data_root_are_refused(tmp_path, text):
    (tmp_path / "root" / "imgs").mkdir(parents=True)
    with pytest.raises(OutsideDataRoot):
        confine(text, tmp_path / "root", "images folder")


def test_a_link_out_of_the_data_root_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(OutsideDataRoot, match="outside the data root"):
        confine("link", tmp_path / "root")
    with pytest.raises(OutsideDataRoot, match="outside the data root"):
        confine(str(tmp_path / "secret"), tmp_path / "root")  # the absolute path of a sibling


def test_the_page_functions_confine_what_they_read(tmp_path):
    """The Results and Train handlers and the model pickers go through `confine`; the error is the page's line."""
    gr = pytest.importorskip("gradio")
    from indomain import ui

    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    config = ui.UISetup({"p": "/somewhere/prior"}, {}, (tmp_path / "root").resolve(), (tmp_path / "root" / "out"))
    assert ui._pick("p", config.priors, config.data_root, "prior") == "/somewhere/prior"  # the operator's choice
    with pytest.raises(OutsideDataRoot):
        ui._pick(str(tmp_path / "outside"), config.priors, config.data_root, "prior")
    with pytest.raises(OutsideDataRoot):
        ui.open_results(config, "../outside")
    with pytest.raises(OutsideDataRoot):
        ui._train_config(config, "server folder", None, str(tmp_path / "outside"), "p", "full", 4, 2, "", 32, 2, 2)
    assert not (tmp_path / "root" / "out").exists()  # refused before anything was written
    shown = ui._guarded(lambda: ui.open_results(config, "../outside"), 4)()
    assert shown[:3] == (gr.skip(),) * 3 and "error: results folder &#x27;../outside&#x27;" in shown[3]
    assert "Traceback" not in shown[3]


def test_a_hub_id_is_a_hub_id_unless_such_a_folder_exists(tmp_path):
    pytest.importorskip("gradio")
    from indomain import ui

    assert ui._pick("someone/ffhq-domain", {}, tmp_path, "domain model") == "someone/ffhq-domain"
    (tmp_path / "someone" / "ffhq-domain").mkdir(parents=True)
    assert ui._pick("someone/ffhq-domain", {}, tmp_path, "domain model") == str(tmp_path.resolve() / "someone" / "ffhq-domain")
    for text in ("../ffhq", "/etc/x"):
        with pytest.raises(OutsideDataRoot):
            ui._pick(text, {}, tmp_path, "domain model")


def test_ui_refuses_an_output_folder_outside_the_data_root(tmp_path, capsys):
    (tmp_path / "root").mkdir()
    assert main(["ui", "--data-root", str(tmp_path / "root"), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "outside the data root" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# The bind address


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_binds_quietly(host):
    from indomain.ui import host_warning

    assert host_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "myhost"])
def test_other_binds_warn(host):
    from indomain.ui import host_warning

    assert host_warning(host).startswith(f"warning: --host {host} serves the page to other machines")


def test_ui_host_0000_prints_the_warning(tmp_path, capsys, monkeypatch):
    from indomain import ui

    launched = {}

    class App:
        def queue(self):
            return self

        def launch(self, **kw):
            launched.update(kw)

    monkeypatch.setattr(ui, "build_app", lambda config: App())
    assert main(["ui", "--host", "0.0.0.0", "--port", "7999", "--data-root", str(tmp_path)]) == 0
    assert "warning: --host 0.0.0.0" in capsys.readouterr().err
    assert launched["server_name"] == "0.0.0.0" and launched["allowed_paths"] == [str(tmp_path.resolve())]
    assert main(["ui", "--data-root", str(tmp_path)]) == 0  # the default: loopback, no warning
    assert "warning" not in capsys.readouterr().err and launched["server_name"] == "127.0.0.1"


def test_importing_indomain_and_ui_help_load_no_gradio():
    code = ("import sys, contextlib, io, indomain, indomain.cli\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    indomain.cli.main(['ui', '--help'])\n"
            "assert 'gradio' not in sys.modules, 'gradio imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_train_argv_is_the_config_on_the_command_line(tmp_path):
    """The background process gets every setting the page chose, through `indomain train`'s own parser."""
    from indomain.cli import build_parser
    from indomain.cliargs import from_args
    from indomain.train import TrainConfig
    from indomain.uijobs import train_argv

    config = TrainConfig(prior="p", images="i", output="o", resolution=32, max_train_steps=2, lora_rank=4,
                         validation_steps=2, checkpointing_steps=2, validation_inference_steps=2, log_every=1,
                         use_ema=False, validation_prompts=["a cat", "a dog"], resume="latest")
    argv = ["train", *train_argv(config)]
    assert from_args(TrainConfig, build_parser(argv).parse_args(argv)) == config


# ----------------------------------------------------------------------------------------------------
# Training jobs: uploads, state, Stop (a stand-in process; the browser test runs a real one)


def test_uploads_land_in_a_claimed_folder(tmp_path):
    import json

    from indomain.uijobs import save_uploads

    (tmp_path / "a.png").write_bytes(b"x")
    folder = save_uploads([str(tmp_path / "a.png")], tmp_path / "out")
    assert (folder / "0000_a.png").read_bytes() == b"x"
    assert json.loads((folder / ".indomain-run.json").read_text())["command"] == "ui-upload"
    with pytest.raises(ValueError, match="no images uploaded"):
        save_uploads([], tmp_path / "out")


def _job(tmp_path, name, argv):
    import json

    from indomain import uijobs
    from indomain.outputs import claim_output_dir, close_run

    run, job = tmp_path / name, tmp_path / (name + uijobs.JOB_SUFFIX)
    run.mkdir()
    claim_output_dir(job, "ui-train")  # as start_training does
    proc = subprocess.Popen(argv, start_new_session=True)
    uijobs._CHILDREN[proc.pid] = proc
    (job / "job.json").write_text(json.dumps({"pid": proc.pid, "max_train_steps": 10}))
    close_run(job)
    return run, job, proc


def test_a_run_is_running_then_stopped(tmp_path):
    from indomain.uijobs import list_runs, read_status, stop_training

    run, _, proc = _job(tmp_path, "train-1", ["sleep", "60"])
    (run / "train_log.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    status = read_status(run)
    assert status.state == "running" and status.losses == [(1, 0.5), (2, 0.4)] and "step 2 of 10" in status.message
    assert list_runs(tmp_path) == [run]
    assert stop_training(run).startswith("stopped train-1")
    assert proc.poll() is not None and read_status(run).state == "stopped"


def test_a_process_id_reused_by_another_process_is_not_the_run(tmp_path):
    import json

    from indomain import uijobs

    run, job, proc = _job(tmp_path, "train-3", ["sleep", "60"])
    uijobs._CHILDREN.pop(proc.pid)  # as seen by a restarted server
    record = json.loads((job / "job.json").read_text())
    try:
        assert uijobs.read_status(run).state == "running"  # no start time recorded: the id alone
        ticks = uijobs._start_ticks(proc.pid)
        (job / "job.json").write_text(json.dumps({**record, "start_ticks": ticks}))
        assert uijobs.read_status(run).state == "running"
        (job / "job.json").write_text(json.dumps({**record, "start_ticks": ticks - 1}))
        assert uijobs.read_status(run).state == "failed"
        assert uijobs.stop_training(run) == "train-3 is not running"  # and no signal is sent
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_failed_run_shows_its_error_line(tmp_path):
    run, job, proc = _job(tmp_path, "train-2", ["true"])
    proc.wait()
    (job / "train.log").write_text("loading\nerror: training diverged: non-finite loss nan at step 3\n")
    from indomain.uijobs import read_status

    status = read_status(run)
    assert status.state == "failed" and status.message == "error: training diverged: non-finite loss nan at step 3"


# ----------------------------------------------------------------------------------------------------
# The tabs' functions, without a browser (the shipped emoji prior, 32 px, 2 steps)


@pytest.fixture
def page(tmp_path):
    pytest.importorskip("gradio")
    from indomain import ui
    from indomain.world.prior import emoji_prior_dir

    root = (tmp_path / "root").resolve()
    root.mkdir()
    return ui.UISetup({ui.SHIPPED_PRIOR: str(emoji_prior_dir())}, {}, root, root / "outputs" / "ui", "cpu")


def test_generate_writes_what_indomain_generate_writes(page):
    import json
    import zipfile

    from indomain import ui

    gen = ui.Generator(page)
    prior, ours, download, status = gen.run(False, ui.SHIPPED_PRIOR, [], "smiling face", "", 2.5, 2.5, 2, 5, 2, 32,
                                            None, progress=lambda *a, **k: None)
    assert "no domain model chosen" in status and len(prior) == 2 and ours == []
    out = Path(download[0]).parent
    record = json.loads((out / "settings.json").read_text())
    assert record["settings"]["seed"] == 5 and record["settings"]["domain_scale"] == 0.0
    assert [f["file"] for f in record["images"]] == ["prior_seed000005.png", "prior_seed000006.png"]
    assert set(zipfile.ZipFile(download[0]).namelist()) == {"prior_seed000005.png", "prior_seed000006.png", "grid.png",
                                                           "settings.json"}
    assert json.loads((out / ".indomain-run.json").read_text())["command"] == "generate"  # claimed, closed


def test_ours_is_sampled_as_indomain_generate_samples_it(page, tmp_path):
    """The page's "ours" takes generate's guidance form (auto: domain-text; or the form `indomain tune` stored)."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    from indomain import ui
    from indomain.nulltext import NullTextUNet
    from indomain.pipeline import InDomainPipeline

    prior = page.priors[ui.SHIPPED_PRIOR]
    pipe = InDomainPipeline.from_pretrained(prior)
    domain = page.data_root / "domain"
    NullTextUNet.from_prior(pipe.unet, pipe.encode_text([""], torch.device("cpu")), prior=prior).save_pretrained(domain)
    page.domains["mine"] = str(domain)
    gen = ui.Generator(page)

    def ours(w_d: float) -> tuple[np.ndarray, dict]:
        _, shown, download, _ = gen.run(False, ui.SHIPPED_PRIOR, ["mine"], "smiling face", "", w_d, 2.5, 2, 5, 1, 32,
                                        None, progress=lambda *a, **k: None)
        record = json.loads((Path(download[0]).parent / "settings.json").read_text())
        return np.asarray(Image.open(shown[0][0])), next(f for f in record["images"] if f["file"].startswith("ours"))

    image, entry = ours(4.0)
    assert entry["guidance_form"] == "domain-text"
    out = tmp_path / "cli"
    assert main(["generate", "--prior", prior, "--domain", str(domain), "--prompt", "smiling face", "--seed", "5",
                 "--num-images", "1", "--steps", "2", "--height", "32", "--width", "32", "--domain-guidance-scale",
                 "4", "--guidance-scale", "2.5", "--out", str(out), "-q"]) == 0
    assert np.array_equal(image, np.asarray(Image.open(out / "p00_seed000005.png")))
    # the form `indomain tune` stored with the domain model is the page's too
    (domain / "tuned_guidance.json").write_text(json.dumps({"guidance_form": "decoupled", "domain_guidance_scale": 1.0,
                                                            "guidance_scale": 2.0}))
    assert ours(4.0)[1]["guidance_form"] == "decoupled"


def test_generate_with_a_controlnet_takes_the_control_image(page, tmp_path):
    from PIL import Image, ImageDraw

    from indomain import ui
    from indomain.world.render import shipped_weights

    page.controlnet = str(shipped_weights("emoji-controlnet"))
    edges = Image.new("RGB", (32, 32), "black")
    ImageDraw.Draw(edges).ellipse((4, 4, 28, 28), outline="white")
    edges.save(tmp_path / "edges.png")
    prior, _, download, status = ui.Generator(page).run(False, ui.SHIPPED_PRIOR, [], "", "", 0.0, 2.5, 2, 0, 1, 32,
                                                        str(tmp_path / "edges.png"), progress=lambda *a, **k: None)
    import json

    settings = json.loads((Path(download[0]).parent / "settings.json").read_text())["settings"]
    assert settings["controlnet"] == [page.controlnet] and settings["control_image"] == [str(tmp_path / "edges.png")]


def test_stop_ends_sampling_and_saves_nothing(page):
    from indomain import ui

    gen = ui.Generator(page)
    _, _, _, status = gen.run(False, ui.SHIPPED_PRIOR, [], "", "", 0.0, 2.5, 5, 0, 1, 32, None,
                              progress=lambda *a, **k: gen.stop.set())  # Stop pressed during the first step
    assert "stopped after 1 of 5 steps; nothing was saved" in status
    assert not list(page.out_root.glob("generate-*"))  # the claimed folder held nothing and is gone


def test_generate_errors_are_the_cli_lines(page):
    from indomain import ui

    gen = ui.Generator(page)
    run = ui._guarded(lambda: gen.run(False, ui.SHIPPED_PRIOR, [], "", "", 2.5, 2.5, 2, 0, 1, 33, None,
                                      progress=lambda *a, **k: None), 4)
    assert "error:" in run()[3] and "Traceback" not in run()[3]
    grid = ui._guarded(lambda: gen.run(True, ui.SHIPPED_PRIOR, [], "", "", 2.5, 2.5, 2, 0, 1, 32, None,
                                       progress=lambda *a, **k: None), 4)
    assert "error: the weight grid varies w_d: choose a domain model" in grid()[3]


def test_a_domain_that_is_not_a_model_is_the_cli_error_and_leaves_nothing(page):
    from indomain import ui

    (page.data_root / "notamodel").mkdir()
    (page.data_root / "notamodel" / "x.txt").write_text("x")
    run = ui._guarded(lambda: ui.Generator(page).run(False, ui.SHIPPED_PRIOR, ["notamodel"], "", "", 2.5, 2.5, 2, 0, 1,
                                                     32, None, progress=lambda *a, **k: None), 4)
    message = run()[3]
    assert "error:" in message and "notamodel" in message and "Traceback" not in message
    assert not list(page.out_root.glob("generate-*"))


def test_edit_runs_indomain_edit(page, tmp_path):
    from PIL import Image

    from indomain import ui

    Image.new("RGB", (32, 32), (250, 200, 40)).save(tmp_path / "face.png")
    before, after, status = ui.run_edit(page, str(tmp_path / "face.png"), ui.SHIPPED_PRIOR, [], "smiling face", "",
                                        2.5, 2.5, 0.6, "sdedit", 2, 0)
    assert before == str(tmp_path / "face.png") and Path(after).is_file() and "edited (sdedit" in status
    assert (Path(after).parent / "settings.json").is_file()


def test_results_reads_an_evaluate_folder_and_marks_the_pareto_front(page):
    from PIL import Image

    from indomain import ui

    folder = page.data_root / "eval"
    (folder / "grids").mkdir(parents=True)
    (folder / "results.csv").write_text("method,w_d,w_c,setting,clip_score,fid\n"
                                        "ours,1,2.5,a,0.30,40\nours,2.5,2.5,b,0.25,30\nft,0,2.5,c,0.20,35\n")
    Image.new("RGB", (8, 8)).save(folder / "plot.png")
    Image.new("RGB", (8, 8)).save(folder / "grids" / "a.png")
    plots, grids, table, status = ui.open_results(page, "eval")
    assert [c for _, c in plots] == ["plot.png"] and len(grids) == 1 and "1 plot(s), 1 grid(s)" in status
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [r.startswith("| ● |") for r in rows] == [True, True, False]  # c: worse clip and worse fid than b
    with pytest.raises(ValueError, match="not an `indomain evaluate`"):
        ui.open_results(page, ".")


# ----------------------------------------------------------------------------------------------------
# A real browser


def _browser_or_skip():
    """(chromium, chromedriver) paths, or skip (fail under INDOMAIN_REQUIRE_BROWSER=1) with the reason."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    reason = None
    if missing:
        reason = f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver; make test does)"
    else:
        try:
            import selenium  # noqa: F401
            import gradio  # noqa: F401
        except ImportError as e:
            reason = f"{e.name} not installed (pip install -e '.[dev]')"
    if reason:
        if os.environ.get("INDOMAIN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"INDOMAIN_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return shutil.which("chromium"), shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"indomain ui exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout} s")


def _images(folder: Path, n: int) -> None:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True)
    for i in range(n):
        im = Image.new("RGB", (32, 32), "white")
        ImageDraw.Draw(im).ellipse((4 + i, 4, 28, 28 - i), fill=(30 * i, 200 - 20 * i, 90), outline="black", width=2)
        im.save(folder / f"{i}.png")


@pytest.fixture
def app(tmp_path):
    """`indomain ui` on a free port, data root = tmp_path (8 images in imgs/, an empty folder empty/)."""
    _browser_or_skip()
    _images(tmp_path / "imgs", 8)
    (tmp_path / "empty").mkdir()
    port = _free_port()
    log = open(tmp_path / "ui.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "indomain.cli", "ui", "--port", str(port), "--data-root", str(tmp_path),
                             "--device", "cpu"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, proc, 180)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        print((tmp_path / "ui.log").read_text(errors="replace")[-3000:])


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = _browser_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1500", "--lang=en-US"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def test_the_page_in_a_real_browser(app, tmp_path):
    """Train 2 steps on 8 images (a sample appears), see the empty-folder error, generate at two w_d values."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("INDOMAIN_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    driver = _driver()
    wait = lambda seconds, what: WebDriverWait(driver, seconds, poll_frequency=0.5).until(lambda d: what())  # noqa: E731

    def element(css: str):
        return driver.find_element(By.CSS_SELECTOR, css)

    def fill(css: str, value: str) -> None:
        box = element(css)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        box.send_keys(value)
        box.send_keys(Keys.TAB)  # commits the value (a slider's number box, a Number)

    def tab(name: str) -> None:
        element_xpath = f"//button[@role='tab' and normalize-space(.)='{name}']"
        driver.find_element(By.XPATH, element_xpath).click()

    try:
        driver.get(app)
        wait(60, lambda: driver.find_elements(By.CSS_SELECTOR, "#generate-btn"))

        # Train: an empty folder shows the CLI's error in the page
        tab("Train")
        fill("#train-folder textarea", "empty")
        for css, value in [("#train-steps input", "2"), ("#train-resolution input", "32"), ("#train-every input", "2"),
                           ("#train-sample-steps input", "2")]:
            fill(css, value)
        element("#train-start").click()
        wait(60, lambda: "error:" in element("#train-message").text)
        status = element("#train-message").text
        assert "is empty" in status and "Traceback" not in driver.page_source, status
        driver.save_screenshot(str(shots / "train-error.png"))

        # Train 2 steps on 8 images: the run finishes and its validation sample appears
        fill("#train-folder textarea", "imgs")
        element("#train-start").click()
        wait(300, lambda: "finished" in element("#train-status").text or "error:" in element("#train-status").text)
        assert "finished" in element("#train-status").text, element("#train-status").text
        wait(30, lambda: element("#train-samples").find_elements(By.TAG_NAME, "img"))
        driver.save_screenshot(str(shots / "train.png"))
        run = next((tmp_path / "outputs" / "ui").glob("train-*[0-9]"))
        assert list((run / "samples").glob("step0000002_*.png"))

        # Generate with the trained domain model at two w_d values: two different images
        tab("Generate")
        domain_box = element("#domains input")
        domain_box.send_keys(f"outputs/ui/{run.name}")
        domain_box.send_keys(Keys.ENTER)
        for css, value in [("#steps input[type=number]", "2"), ("#num input[type=number]", "4"),
                           ("#size input", "32"), ("#prompt textarea", "smiling face")]:
            fill(css, value)
        pictures = []
        for w_d in ("1", "6"):
            fill("#w_d input[type=number]", w_d)
            before = element("#gen-status").text
            element("#generate-btn").click()
            done = ("wrote", "error:", "stopped")
            wait(180, lambda: element("#gen-status").text != before and element("#gen-status").text.startswith(done))
            status = element("#gen-status").text
            assert status.startswith("wrote 4 prior-alone and 4 ours images (seeds 0-3)"), status
            src = element("#ours-gallery img").get_attribute("src")
            with urllib.request.urlopen(src, timeout=10) as r:
                pictures.append(r.read())
        assert len(element("#prior-gallery").find_elements(By.TAG_NAME, "img")) >= 1
        driver.save_screenshot(str(shots / "generate.png"))

        from PIL import Image, ImageChops

        a, b = (Image.open(io.BytesIO(p)).convert("RGB") for p in pictures)
        assert ImageChops.difference(a, b).getbbox() is not None, "w_d = 1 and w_d = 6 gave the same image"
        assert len(list((tmp_path / "outputs" / "ui").glob("generate-*/settings.json"))) == 2
    finally:
        driver.quit()
