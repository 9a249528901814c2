#!/usr/bin/env python3
"""PyTorch's own logits at float16 and bfloat16 for every fixture, next to its F32 goldens.

Dev-only, run from the crate root after scripts/make_fixtures.py:

    /work/venv/bin/python scripts/half_goldens.py [fixture ...]

For each tests/fixtures/<name>/golden.json, loads the checkpoint with transformers at F32 and
at each reduced dtype on the CPU (as a user would: `from_pretrained(dtype=...)`, the default
attention implementation, eager for ModernBERT as the F32 goldens use). The inputs are the
golden cases plus the first 100 lines of benches/texts/tweets.txt tokenized by the fixture's own
tokenizer (ten texts alone made the error ratios a coin toss), run in right-padded batches of
32 in order. Writes tests/fixtures/<name>/half.json:

    {"input_ids": [[...], ...], "token_type_ids": [...], "batch": 32,
     "float32": [[logit, ...], ...], "float16": [...], "bfloat16": [...],
     "torch": "2.x", "transformers": "5.x"}

For a token-classification fixture (golden.json's "task" is "token") the rows of logits are the
real tokens of each input in turn, padding left out.

tests/engine/half.rs runs the same ids in the same batches and compares our error at each dtype
against PyTorch's, both measured from PyTorch's F32. Deterministic: no randomness, one thread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification,
                          AutoTokenizer)
from transformers.utils import logging as hf_logging

from make_fixtures import padded  # scripts/ is on the path when this script runs

torch.set_num_threads(1)
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TEXTS = ROOT / "benches" / "texts" / "tweets.txt"
EXTRA_TEXTS = 100
BATCH = 32


def run(out: Path) -> None:
    golden = json.loads((out / "golden.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(out))
    # A token-classification fixture's rows are its tokens: one row of logits per real token.
    tokens = golden.get("task") == "token"
    auto = AutoModelForTokenClassification if tokens else AutoModelForSequenceClassification
    cases = [dict(input_ids=c["input_ids"], token_type_ids=c["token_type_ids"])
             for c in golden["cases"] if not c.get("refused") and c["input_ids"]]
    for line in TEXTS.read_text().splitlines()[:EXTRA_TEXTS]:
        enc = tok(line, truncation=True, max_length=golden["max_length"])
        ids = list(enc["input_ids"])
        if not ids:
            continue
        cases.append(dict(input_ids=ids, token_type_ids=[0] * len(ids)))
    result = {"input_ids": [c["input_ids"] for c in cases],
              "token_type_ids": [c["token_type_ids"] for c in cases], "batch": BATCH,
              "torch": torch.__version__, "transformers": transformers.__version__}
    for name, dtype in (("float32", torch.float32), ("float16", torch.float16),
                        ("bfloat16", torch.bfloat16)):
        kw = dict(dtype=dtype)
        if cfg.get("model_type") == "modernbert":
            kw["attn_implementation"] = "eager"
        model = auto.from_pretrained(str(out), **kw).eval()
        rows = []
        for at in range(0, len(cases), BATCH):
            ids, types, mask = padded(cases[at:at + BATCH], tok.pad_token_id)
            args = dict(input_ids=ids, attention_mask=mask)
            if cfg.get("type_vocab_size", 0) > 0 and "token_type_ids" in tok.model_input_names:
                args["token_type_ids"] = types
            with torch.no_grad():
                logits = model(**args).logits.float()
            if tokens:
                for i in range(logits.shape[0]):
                    rows += logits[i, : int(mask[i].sum())].tolist()
            else:
                rows += logits.tolist()
        result[name] = [[float(x) for x in row] for row in rows]
    want = torch.tensor(result["float32"])
    for name in ("float16", "bfloat16"):
        got = torch.tensor(result[name])
        err = (got - want).abs()
        wrong = int((got.argmax(-1) != want.argmax(-1)).sum()) if want.shape[1] > 1 else 0
        print(f"{out.name:24} {name:9} mean |Δ| {err.mean():.3e}  max {err.max():.3e}  "
              f"wrong labels {wrong}")
    (out / "half.json").write_text(json.dumps(result) + "\n")


def main(argv):
    only = set(argv[1:])
    for golden in sorted(FIXTURES.glob("*/golden.json")):
        if (golden.parent / "config.json").exists() and (not only or golden.parent.name in only):
            run(golden.parent)


if __name__ == "__main__":
    main(sys.argv)
