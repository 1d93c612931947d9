"""`indomain ui` on the CPU: time to the page answering, click-to-first-image at 32 px, and the app's memory.

    PYTHONPATH=$PWD/src .venv/bin/python benchmarks/ui_latency.py --runs 3

Each run starts a fresh ``python -m indomain.cli ui`` (shipped emoji prior, no domain model, a new data root) and
times ``Popen`` -> the first HTTP 200 on ``/``. Then headless Chromium (selenium) opens the page, sets the size to
32 px and clicks Generate twice: the first click loads the prior (cold), the second reuses it (warm); each is timed
from the click to the first image in the prior-alone gallery. Memory: the server's resident set (VmRSS) idle and
after the clicks, against the peak resident set of `indomain generate` making the same images in its own process.
Needs chromium and chromium-driver (apt) and selenium.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(driver, css: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    box.send_keys(value, Keys.TAB)


def one_run(steps: int, num: int) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = Path(tempfile.mkdtemp(prefix="ui-bench-"))  # also the server's cwd, so no `make demo` model is found
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "indomain.cli", "ui", "--port", str(port), "--data-root", str(root),
                             "--device", "cpu"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"indomain ui exited with {proc.returncode} (is PYTHONPATH absolute?)")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.05)
    answer = time.perf_counter() - start
    idle = rss_mib(proc.pid)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1500"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    clicks = []
    try:
        driver.get(url)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate-btn"))
        for css, value in [("#size input", "32"), ("#steps input[type=number]", str(steps)),
                           ("#num input[type=number]", str(num))]:
            fill(driver, css, value)
        for seed in ("0", "100"):  # another seed: new images, so new file URLs (gradio names files by content)
            fill(driver, "#seed input", seed)
            old = {i.get_attribute("src") for i in driver.find_elements(By.CSS_SELECTOR, "#prior-gallery img")}
            t = time.perf_counter()
            driver.find_element(By.CSS_SELECTOR, "#generate-btn").click()
            WebDriverWait(driver, 300, poll_frequency=0.02).until(
                lambda d: any(i.get_attribute("src") not in old for i in d.find_elements(By.CSS_SELECTOR, "#prior-gallery img")))
            clicks.append(time.perf_counter() - t)
        after = rss_mib(proc.pid)
        peak = rss_mib(proc.pid, "VmHWM")
    finally:
        driver.quit()
        proc.terminate()
        proc.wait()
    cli = subprocess.Popen([sys.executable, "-m", "indomain.cli", "-q", "generate", "--prior", _prior(), "--domain-guidance-scale", "0",
                            "--num-images", str(num), "--steps", str(steps), "--height", "32", "--width", "32",
                            "--device", "cpu", "--out", str(root / "cli")], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(cli.pid, 0)
    shutil.rmtree(root, ignore_errors=True)
    return {"answer_s": answer, "cold_s": clicks[0], "warm_s": clicks[1], "idle_mib": idle, "after_mib": after,
            "peak_mib": peak, "cli_peak_mib": usage.ru_maxrss / 1024}


def _prior() -> str:
    from indomain.world.prior import emoji_prior_dir

    return str(emoji_prior_dir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25, help="sampler steps (default: %(default)s, the CLI's)")
    parser.add_argument("--num-images", type=int, default=4, help="images per click (default: %(default)s)")
    args = parser.parse_args()
    runs = [one_run(args.steps, args.num_images) for _ in range(args.runs)]
    print(f"{args.runs} runs, median (min-max); {args.steps} steps, {args.num_images} images of 32 px, prior alone, CPU")
    names = {"answer_s": "indomain ui -> page answers (s)", "cold_s": "click -> first image, first click (s)",
             "warm_s": "click -> first image, next click (s)", "idle_mib": "server RSS idle (MiB)",
             "after_mib": "server RSS after 2 clicks (MiB)", "peak_mib": "server peak RSS (MiB)",
             "cli_peak_mib": "indomain generate peak RSS, same images (MiB)"}
    for key, name in names.items():
        values = [r[key] for r in runs]
        print(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) |")


if __name__ == "__main__":
    main()
