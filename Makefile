# initlab developer commands. `make install` then `make test` is the whole set-up.
PYTHON ?= python
PYTEST_ARGS ?=
# the inner loop's files: the unit tests, not the ones that start processes or run whole studies
FAST_FILES = tests/test_data.py tests/test_diagnose.py tests/test_encoder.py tests/test_init.py tests/test_layout.py \
             tests/test_lessons.py tests/test_models.py tests/test_more_inits.py tests/test_norms.py tests/test_plots.py \
             tests/test_probe.py tests/test_stats_table.py tests/test_telemetry.py tests/test_tensorboard.py \
             tests/test_theory.py tests/test_watch.py

.PHONY: install test test-fast test-all test-oldest test-speedups-off docs smoke warm sweep plots bench studies lint clean

# the lowest versions pyproject.toml declares, for `make test-oldest` (numpy < 2: what those builds were compiled against)
OLDEST = "torch==2.2.*" "torchvision==0.17.*" "hydra-core==1.3.2" "pandas==2.0.*" "pyarrow==14.*" \
         "matplotlib==3.7.*" "rich==13.0.*" "numba==0.60.*" "numpy==1.26.*"

install:  ## editable install with the dev tools
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the fast suite: what .ci/run calls (slow tests excluded)
	$(PYTHON) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-fast:  ## the inner loop (about a minute): unit tests, no subprocess-heavy files
	$(PYTHON) -m pytest -m "not slow and not gpu" $(FAST_FILES) $(PYTEST_ARGS)

test-oldest:  ## the fast suite on the lowest declared versions, in its own venv (.venv-oldest)
	$(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install --quiet --upgrade pip
	.venv-oldest/bin/python -m pip install --quiet $(OLDEST) -e ".[dev]"
	.venv-oldest/bin/python -m pip list 2>/dev/null | grep -iE "^(torch|torchvision|hydra-core|pandas|pyarrow|matplotlib|rich|numba|numpy) "
	.venv-oldest/bin/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-speedups-off:  ## the fast suite with every speed-up of initlab/speedups/ off
	INITLAB_SPEEDUPS=0 $(PYTHON) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-all:  ## everything that can run here, slow tests included
	$(PYTHON) -m pytest -m "not gpu" $(PYTEST_ARGS)

smoke:  ## the CI smoke study: seconds on a 2-core CPU
	$(PYTHON) -m initlab experiment=smoke

warm:  ## compile the CPU statistics kernels ahead (numba caches them on disk; else the first long run pays)
	$(PYTHON) -c "from initlab.telemetry.reducers import warm_kernels; warm_kernels()"

sweep:  ## demonstration study: conv4 x 4 inits x bn on/off on synthetic data
	$(PYTHON) -m initlab -m model=conv4 init=default,xavier,kaiming,normal bn=false,true train.steps=100

plots:  ## rebuild the plots of the latest run under outputs/
	$(PYTHON) -m initlab.report --latest outputs

bench:  ## benchmarks/: measured tables written to benchmarks/results/
	$(PYTHON) benchmarks/run_all.py

studies:  ## the classic studies over 3 seeds: benchmarks/results/studies_cpu.md, which docs/studies.md includes (~35 min)
	$(PYTHON) -m benchmarks.studies

docs:  ## the documentation site (site/), strictly: a broken link or reference fails
	$(PYTHON) -m mkdocs build --strict

lint:
	$(PYTHON) -m ruff check initlab tests benchmarks

clean:
	rm -rf outputs/runs outputs/multirun .pytest_cache build site *.egg-info
