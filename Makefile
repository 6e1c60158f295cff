# ld3 -- the two commands that matter: `make demo` and `make test` (each installs first if needed).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.ld3-installed
EXTRAS ?= dev,diffusers

SOLVERS ?= dpmpp,unipc,ipndm
NFES    ?= 4,5,6
MODEL   ?= mnist_gmm

# paper setups of scripts/repro.py: make repro-mnist, repro-cifar10, ...
REPRO_SETUPS  = mnist cifar10 ffhq afhqv2 lsun imagenet sd15
REPRO_TARGETS = $(addprefix repro-,$(REPRO_SETUPS))

# k-diffusion's own samplers, for the tests that compare ld3's exports with them (tests skip without it).  Its
# package __init__ imports clip and wandb and a plain install pins numpy < 2, so it goes, without dependencies, into
# a folder of its own that the tests import k_diffusion.sampling / .external from.
KDIFFUSION_DIR ?= $(VENV)/k-diffusion
KDIFFUSION_INSTALL = $(BIN)/python -m pip install --quiet --no-deps --target $(KDIFFUSION_DIR) k-diffusion==0.1.1.post1 \
	torchsde==0.2.6 trampoline==0.1.2 torchdiffeq==0.2.5 || echo "k-diffusion not installed: the tests that compare with it skip"

.PHONY: install demo test test-all lint bench sweep clean distclean help $(REPRO_TARGETS)

help:
	@echo "make demo    -- the whole LD3 pipeline on the embedded default (MNIST-5k mixture), 25 to 32 s on 2 CPU cores"
	@echo "make test    -- the test suite (fast tests; make test-all includes the slow ones)"
	@echo "make install / lint / bench / sweep SOLVERS=... NFES=... / repro-<setup> / clean"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	$(KDIFFUSION_INSTALL)
	touch $(STAMP)

demo: install
	$(BIN)/ld3 run

# Two pytest workers (pytest-xdist, in the dev extra), each on one torch / BLAS thread (tests/conftest.py);
# --dist loadfile keeps a test file on one worker, so its module fixtures are built once.
PYTEST_WORKERS ?= -n 2 --dist loadfile

test: install
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS)

test-all: install
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) -m "slow or not slow"

lint: install
	$(BIN)/ruff check ld3_cli tests scripts

# CPU-sized benchmark of the embedded default (the GPU recipe is in docs/benchmarks.md)
bench: install
	$(BIN)/python scripts/bench.py model=mnist_gmm --device cpu --cli --json ld3-cache/bench-mnist.json

sweep: install
	$(BIN)/ld3 teacher-sample model=$(MODEL)
	$(BIN)/ld3 train -m model=$(MODEL) solver=$(SOLVERS) nfe=$(NFES)
	$(BIN)/ld3 eval -m model=$(MODEL) solver=$(SOLVERS) nfe=$(NFES)

clean:
	rm -rf ld3-cache outputs multirun .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# Paper reproduction (docs/reproduction.md): files are checked first -- a missing one stops the target at once
# with the list of files and where they go.  REPRO_ARGS="--nfe 4,6 -- sample.n=10000" narrows a run.
$(REPRO_TARGETS): repro-%: install
	$(BIN)/python scripts/repro.py $* $(REPRO_ARGS)
