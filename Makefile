# nat_mm: `make demo` and `make test` set everything up on first use (.venv/ in the repo root).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nat_mm_setup_done
CSRC := $(wildcard csrc/*.h csrc/*.cpp csrc/*/*.h csrc/*/*.cuh csrc/*/*.cpp csrc/*/*.cu)
PYTEST_ARGS ?=
# `make test` runs the suite in this many processes (pytest-xdist; each test file stays in one
# process, so its module fixtures are built once) and then lists the 15 slowest tests.
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadfile --durations=15

.PHONY: setup test test-fast test-fuzz test-cuda-asan demo bench clean

setup: $(STAMP)

# Re-run the (idempotent) setup when the pins, the build or the kernels change.
$(STAMP): requirements/constraints.txt setup.py nat_mm/ops/_build.py tools/setup_env.sh $(CSRC)
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest tests $(XDIST) $(PYTEST_ARGS)

# The quick tests: `slow` marks those over 10 s here (subprocess runs included) and a few 6-8 s
# subprocess runs, to keep this under 3 minutes.
test-fast: setup
	$(PY) -m pytest tests -m "not slow" $(XDIST) $(PYTEST_ARGS)

# The hypothesis tests unseeded (a new random seed each run) with 10x the examples; `make test`
# runs them derandomized with a fixed seed (tests/conftest.py).
test-fuzz: setup
	NAT_MM_FUZZ=1 $(PY) -m pytest tests -m hypothesis $(PYTEST_ARGS)

# The emulated CUDA kernels (nat_mm/testing/cuda_emu) built with AddressSanitizer: out-of-bounds
# global or shared memory accesses of the real .cu abort with a report (-s: pytest would swallow
# it). libasan must be loaded first, and libstdc++ with it: python does not link it, and ASan's
# __cxa_throw interceptor finds no real one for the first C++ exception (a TORCH_CHECK) otherwise.
test-cuda-asan: setup
	NAT_EMU_ASAN=1 \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so.6)" \
	ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0 \
	$(PY) -m pytest tests/cuda_emu/test_cuda_emu.py -s -p no:cacheprovider $(PYTEST_ARGS)

demo: setup
	$(PY) tools/run_demo.py

bench: setup
	$(PY) tools/benchmark_op.py --shapes target 224

clean:
	rm -rf build nat_mm/_C*.so *.egg-info
