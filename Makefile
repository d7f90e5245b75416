# Two commands for a fresh machine (only Python needed): `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TORCH  ?= torch==2.13.0
EXTRAS ?= cpu,bench,dev,ray

.PHONY: install serve test lint bench-frozen clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a bare requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	# frost textures only: the package's code is never imported, and its deps would pull a second OpenCV
	$(BIN)/pip install --quiet --no-deps "imagecorruptions==1.1.2"
	touch $(STAMP)

install: $(STAMP)

serve: install  ## start the server on the bundled CIFAR-10 model (http://127.0.0.1:8000/docs)
	$(BIN)/tta-server serve

test: install  ## the CI suite
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy adapters tta_server benchmarks monitoring

bench-frozen: install
	$(BIN)/tta-bench frozen-forward --data ../shared/data  # -> runs/frozen-forward/

clean:
	rm -rf $(VENV) build *.egg-info
