# initlab developer commands. `make install` then `make test` is the whole set-up.
PYTHON ?= python
PYTEST_ARGS ?=

.PHONY: install test test-all smoke warm sweep plots bench studies lint clean

install:  ## editable install with the dev tools
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the fast suite: what .ci/run calls (slow tests excluded)
	$(PYTHON) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

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

studies:  ## the classic studies over 3 seeds: benchmarks/results/studies_cpu.md and the README's table (~35 min)
	$(PYTHON) -m benchmarks.studies

lint:
	$(PYTHON) -m ruff check initlab hydra_plugins tests benchmarks

clean:
	rm -rf outputs/runs outputs/multirun .pytest_cache build *.egg-info
