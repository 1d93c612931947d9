"""How long the `indomain` command takes to start: `--help` and `import indomain`, each in a fresh process.

    .venv/bin/python benchmarks/cli_startup.py                      # the installed (or PYTHONPATH) indomain
    PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/cli_startup.py --runs 5   # another checkout

Each command runs ``--runs`` times in a new interpreter, exactly as the console script does
(``from indomain.cli import main; sys.exit(main())``). Prints the median wall time and the median CPU time
(user + system of the child) per command, and which heavy libraries each one imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "diffusers", "transformers", "torchmetrics", "accelerate", "matplotlib", "numpy")

# name -> the Python code the fresh interpreter runs
COMMANDS = {
    "indomain --help": "from indomain.cli import main; main(['--help'])",
    "indomain generate --help": "from indomain.cli import main; main(['generate', '--help'])",
    "indomain train --help": "from indomain.cli import main; main(['train', '--help'])",
    'python -c "import indomain"': "import indomain",
}
REPORT = (  # printed to stderr at exit, so it never mixes with the help text on stdout
    "import atexit, sys; atexit.register(lambda: print('HEAVY=' + ','.join("
    "m for m in {heavy!r} if m in sys.modules), file=sys.stderr))\n"
)


def run_once(code: str) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, heavy modules it imported) for one fresh interpreter."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", REPORT.format(heavy=HEAVY) + code],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    heavy = next((line[6:] for line in stderr.splitlines() if line.startswith("HEAVY=")), "?")
    if proc.returncode not in (0,) or heavy == "?":
        raise RuntimeError(f"{code!r} failed (exit {proc.returncode}):\n{stderr}")
    return wall, usage.ru_utime + usage.ru_stime, heavy or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters per command (default: %(default)s)")
    args = parser.parse_args()

    import indomain  # noqa: F401  (warms the file cache and says which checkout is measured)

    print(f"indomain from {os.path.dirname(sys.modules['indomain'].__file__)}, {args.runs} runs each, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"| command | median wall s | median CPU s | heavy imports |")
    print(f"|---|---|---|---|")
    for name, code in COMMANDS.items():
        runs = [run_once(code) for _ in range(args.runs)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"| `{name}` | {wall:.2f} | {cpu:.2f} | {runs[-1][2]} |", flush=True)


if __name__ == "__main__":
    main()
