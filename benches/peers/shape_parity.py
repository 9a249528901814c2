#!/usr/bin/env python3
"""Dev-only: classifyd's F32 logits against transformers' on arch.sh's random-weight shapes, so
the timings compare the same computation. Prints one line per shape: the largest |diff| over
the first N texts, each text alone.

Usage: shape_parity.py BIN MODELS_DIR TEXTS N SHAPE...   (needs torch and transformers)
"""
import inspect
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peerlib import load_tokenizer  # noqa: E402


def main():
    binary, models, texts_path, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    texts = [l.strip() for l in open(texts_path, encoding="utf-8") if l.strip()][:n]
    tok = load_tokenizer()
    torch.set_num_threads(2)
    for shape in sys.argv[5:]:
        model_dir = models / shape
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="eager").eval()
        segments = ("token_type_ids" in inspect.signature(model.forward).parameters
                    and getattr(model.config, "type_vocab_size", 0))
        ours = subprocess.run(
            [binary, "classify", "--model", str(model_dir), "--dtype", "f32", "--fields", "logits",
             "--quiet"], input="\n".join(texts).encode(), capture_output=True, check=True)
        worst = 0.0
        with torch.inference_mode():
            for text, line in zip(texts, ours.stdout.decode().splitlines()):
                e = tok.encode(text)
                kw = {"input_ids": torch.tensor([e.ids]),
                      "attention_mask": torch.tensor([e.attention_mask])}
                if segments:
                    kw["token_type_ids"] = torch.tensor([e.type_ids])
                want = model(**kw).logits[0]
                got = torch.tensor(json.loads(line)["logits"])
                worst = max(worst, (got - want).abs().max().item())
        print(f"{shape}: classifyd f32 against transformers, max |diff| {worst:.1e} over "
              f"{len(texts)} texts")


if __name__ == "__main__":
    main()
