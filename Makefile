# Two entry points (see README): `make demo` and `make test`.
# torch==2.13.0 is installed first: its CPU wheel is available locally, while
# letting a dependency resolve torch on its own would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.wsl-installed
EXTRAS := $(VENV)/.wsl-test-extras
# Optional libraries the test suite covers when present (tests skip without them): transformers and peft
# (pinned to the installed torch by a constraints file), timm without its dependencies (its torchvision
# import is stubbed inside the tests that need it; torchvision is never installed).
TEST_EXTRAS ?= transformers peft
TIMM        ?= timm==1.0.31

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

$(EXTRAS): $(STAMP)
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt $(TEST_EXTRAS)
	$(BIN)/python -m pip install -q --no-deps "$(TIMM)"
	touch $(EXTRAS)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/wsl demo

test: $(STAMP) $(EXTRAS)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
