# Two commands do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch 2.13.0 lies on this disk; other versions pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# Threads spin-waiting on a small shared VM make torch many times slower.
export OMP_WAIT_POLICY ?= passive

.PHONY: demo test lint venv browser clean ipa-env openms-env bench-accuracy bench-openms bench-ipa bench model

$(BIN)/dask-assign: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[test]"
	touch $@

venv: $(BIN)/dask-assign

# Debian's chromium renders the HTML report in a test; installed here when missing (as root).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed: the report's browser test is skipped outside CI"

# --overwrite: a second `make demo` replaces the first one's result (only its own files).
# It ends by printing the path of the report page (demo-output/report.html): open it in a browser.
demo: venv
	$(BIN)/dask-assign demo --overwrite

test: venv browser
	$(BIN)/ruff check dask_assign tests benchmarks notebooks
	$(BIN)/python -m pytest -q

# The peer IPA (ipaPy2) in its own environment: it needs pandas < 3.
ipa-env: .venv-ipa/bin/python
.venv-ipa/bin/python:
	$(PYTHON) -m venv .venv-ipa
	.venv-ipa/bin/pip install "ipapy2==1.4.0" "pandas<3"

# The peer pyOpenMS (AccurateMassSearch) in its own environment.
openms-env: .venv-openms/bin/python
.venv-openms/bin/python:
	$(PYTHON) -m venv .venv-openms
	.venv-openms/bin/pip install "pyopenms==3.6.0" psutil

# dask-assign vs pyOpenMS AccurateMassSearch at 1e3, 1e4, 1e5 features, same run.
bench-openms: venv openms-env
	$(BIN)/python benchmarks/vs_pyopenms.py 1000 10000 100000

# Speed against IPA on the shared sets and a 5k-peak set.
bench-ipa: venv ipa-env
	$(BIN)/python benchmarks/vs_ipa.py

# Side by side on every labelled set (the two shared simulated sets, the isomer-crowded 0382
# set made by benchmarks/crowded_set.py, the three real runs): dask-assign, --model none, each
# set's m/z rule and IPA, same run (minutes). ARGS=--no-ipa leaves IPA out. PYTHONPATH: the
# package of this checkout is measured, wherever the venv's editable install points.
bench-accuracy: venv ipa-env
	PYTHONPATH=$(CURDIR) $(BIN)/python benchmarks/accuracy.py $(ARGS)

# Leave one run out: a scorer trained on all other real and simulated runs against the
# generative scorer, on each real and shared run (needs ../shared). No trained model ships:
# none beat the generative scorer on every held-out real run.
model: venv
	$(BIN)/python benchmarks/learned_scorer.py

# The standard benchmark set (minutes): scorer layout, join stage (the bench extra), context
# pass at 1M peaks. Each prints a table and writes benchmarks/*.json.
bench: venv
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/scoring_layout.py
	$(BIN)/python benchmarks/join.py 1000000 100000
	$(BIN)/python benchmarks/context_pass.py 1000000 100000

lint: venv
	$(BIN)/ruff check dask_assign tests benchmarks notebooks

clean:
	rm -rf $(VENV) .venv-ipa .venv-openms build *.egg-info demo-output
