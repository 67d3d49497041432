# nat_mm: `make demo` and `make test` set everything up on first use (.venv/ in the repo root).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nat_mm_setup_done
CSRC := $(wildcard csrc/*.h csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu)
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo bench clean

setup: $(STAMP)

# Re-run the (idempotent) setup when the pins, the build or the kernels change.
$(STAMP): requirements/constraints.txt setup.py nat_mm/ops/_build.py tools/setup_env.sh $(CSRC)
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(PY) tools/run_demo.py

bench: setup
	$(PY) tools/benchmark_op.py --shapes target 224

clean:
	rm -rf build nat_mm/_C*.so *.egg-info
