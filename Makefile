# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
# Both create .venv, install torch (TORCH: pip's arguments for it, several words allowed, e.g.
# TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"; see README.md) and the
# package, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# timm (tests of labelsmooth.integrations.timm) comes without its dependencies: it requires torchvision,
# whose PyPI wheels load only beside the CUDA build of torch (and would pull that build in); the
# tests use timm's loss and Mixup files, which need torch and NumPy alone.
TIMM   ?= timm==1.0.29
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-fast lint data clean bench bench-cells bench-gpu gpu-check gpu-check-dry

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "$(TIMM)"
	touch $@

# Fashion-MNIST comes from Debian's package; installed when missing and we are root.
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && [ ! -f $(FMNIST)/train-images-idx3-ubyte ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
	    echo "note: could not install dataset-fashion-mnist; Fashion-MNIST steps fall back or skip"; \
	  else \
	    echo "note: Fashion-MNIST not found at $(FMNIST) (sudo apt-get install dataset-fashion-mnist)"; \
	  fi; \
	fi

demo: $(VENV)/.installed data
	$(BIN)/python -m labelsmooth demo

# make test: the lint, then every test (CI runs this). make test-fast: the lint, then the tests
# not marked slow (about a minute; end-to-end lab runs and real-compiler checks are left out).
lint: $(VENV)/.installed
	$(BIN)/ruff check .

test: lint data
	$(BIN)/python -m pytest -n 2 -q

test-fast: lint
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

# CPU benchmarks (minutes; results appended to benchmarks/results/*.csv). On a CUDA machine:
# make bench-gpu.
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/loss_cpu.py
	$(BIN)/python benchmarks/linear_cross_entropy.py
	$(BIN)/python benchmarks/lab_seed_protocol.py

# The lab's stacked cells: sweep vs the seed-style loop, and one epoch as cells grow (minutes).
bench-cells: $(VENV)/.installed
	$(BIN)/python benchmarks/lab_cells.py

bench-gpu: $(VENV)/.installed
	$(BIN)/python benchmarks/cross_entropy_gpu.py
	$(BIN)/python benchmarks/linear_cross_entropy.py --device cuda

clean:
	rm -rf $(VENV) build src/*.egg-info

# One-shot GPU acceptance (at most 8 minutes on a fresh H200): the machine's own python3, the
# source tree, liger-kernel from .whl/ when there; rows and log to $OUT, summary last. A CPU
# rehearsal at tiny sizes: make gpu-check-dry (the test suite runs it).
gpu-check:
	bash benchmarks/gpu_acceptance.sh

gpu-check-dry: $(VENV)/.installed
	PYTHON=$(BIN)/python bash benchmarks/gpu_acceptance.sh --dry-run
