# The README's two commands: `make quickstart` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samforge-installed
# Idle OpenMP threads must not spin: on a 2-core machine they would fight DataLoader workers and test processes.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: quickstart test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --quiet --no-build-isolation sam2
	# the annotator's browser tests drive Debian's chromium (Playwright's own browser download is not used)
	test -x /usr/bin/chromium || ! command -v apt-get >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	touch $(STAMP)

quickstart: $(STAMP)
	$(PY) -m samforge quickstart --out runs/quickstart

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

bench: $(STAMP)
	$(PY) benchmarks/predictor.py

clean:
	rm -rf runs .pytest_cache
