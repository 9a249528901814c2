#!/usr/bin/env python3
"""PyTorch's own logits at float16 and bfloat16 for every fixture, next to its F32 goldens.

Dev-only, run from the crate root after scripts/make_fixtures.py:

    /work/venv/bin/python scripts/half_goldens.py [fixture ...]

For each tests/fixtures/<name>/golden.json, loads the checkpoint with transformers at each
reduced dtype on the CPU (as a user would: `from_pretrained(dtype=...)`, the default attention
implementation, eager for ModernBERT as the F32 goldens use), runs every golden case as one
right-padded batch, and writes tests/fixtures/<name>/half.json:

    {"float16": [[logit, ...], ...], "bfloat16": [...], "torch": "2.x", "transformers": "5.x"}

tests/engine/half.rs compares our error at each dtype against PyTorch's, both measured from
the F32 goldens. Deterministic: no randomness, one thread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

torch.set_num_threads(1)
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def padded(cases, pad_id):
    n = max(len(c["input_ids"]) for c in cases)
    ids = torch.full((len(cases), n), pad_id, dtype=torch.long)
    types = torch.zeros((len(cases), n), dtype=torch.long)
    mask = torch.zeros((len(cases), n), dtype=torch.long)
    for i, c in enumerate(cases):
        k = len(c["input_ids"])
        ids[i, :k] = torch.tensor(c["input_ids"])
        types[i, :k] = torch.tensor(c["token_type_ids"])
        mask[i, :k] = 1
    return ids, types, mask


def run(out: Path) -> None:
    golden = json.loads((out / "golden.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(out))
    ids, types, mask = padded(golden["cases"], tok.pad_token_id)
    result = {"torch": torch.__version__, "transformers": transformers.__version__}
    for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        kw = dict(dtype=dtype)
        if cfg.get("model_type") == "modernbert":
            kw["attn_implementation"] = "eager"
        model = AutoModelForSequenceClassification.from_pretrained(str(out), **kw).eval()
        args = dict(input_ids=ids, attention_mask=mask)
        if cfg.get("type_vocab_size", 0) > 0 and "token_type_ids" in tok.model_input_names:
            args["token_type_ids"] = types
        with torch.no_grad():
            logits = model(**args).logits.float()
        result[name] = [[float(x) for x in row] for row in logits.tolist()]
        want = torch.tensor(golden["batch_logits"])
        err = (logits - want).abs()
        wrong = int((logits.argmax(-1) != want.argmax(-1)).sum()) if want.shape[1] > 1 else 0
        print(f"{out.name:24} {name:9} mean |Δ| {err.mean():.3e}  max {err.max():.3e}  "
              f"wrong labels {wrong}")
    (out / "half.json").write_text(json.dumps(result, indent=1) + "\n")


def main(argv):
    only = set(argv[1:])
    for golden in sorted(FIXTURES.glob("*/golden.json")):
        if (golden.parent / "config.json").exists() and (not only or golden.parent.name in only):
            run(golden.parent)


if __name__ == "__main__":
    main(sys.argv)
