#!/usr/bin/env python3
"""Dev-only: exports the committed default model (models/sentiment-minilm, F16 on disk) to ONNX
in float32 with dynamic batch and sequence axes, then checks ONNX Runtime's logits against
PyTorch's on every text of a texts file (batch 1, no padding): max |diff| must be <= 1e-4.

Usage: export_onnx.py [--out benches/peers/out/sentiment-minilm.onnx] [--texts FILE] [--force]
The .onnx file is a build product (benches/peers/out/ is git-ignored); never commit it.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peerlib import MODEL, ROOT, ort_feed, ort_session, read_texts, load_tokenizer  # noqa: E402

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load_torch():
    # eager attention: a plain MatMul/Softmax graph that ORT's optimizer knows how to fuse.
    model = BertForSequenceClassification.from_pretrained(
        MODEL, dtype=torch.float32, attn_implementation="eager")
    return model.float().eval()


def export(model, out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor([[101, 2023, 2003, 1037, 2307, 2143, 102]] * 2)
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    batch, seq = torch.export.Dim("batch", max=1024), torch.export.Dim("sequence", max=512)
    shapes = {name: {0: batch, 1: seq} for name in INPUTS}
    with torch.inference_mode():
        program = torch.onnx.export(
            model, args, dynamo=True, input_names=list(INPUTS), output_names=["logits"],
            dynamic_shapes=shapes, opset_version=18, external_data=False, optimize=True)
    program.save(str(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benches/peers/out/sentiment-minilm.onnx")
    ap.add_argument("--texts", type=Path, default=ROOT / "benches/texts/tweets.txt")
    ap.add_argument("--force", action="store_true", help="export even if --out exists")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    torch.set_num_threads(2)
    model = load_torch()
    if a.force or not a.out.exists():
        export(model, a.out)
        print(f"exported {a.out} ({a.out.stat().st_size / 1e6:.1f} MB)")
    tok = load_tokenizer()
    sess = ort_session(a.out, threads=2)
    worst, argmax_same = 0.0, 0
    texts = read_texts(a.texts)
    with torch.inference_mode():
        for text in texts:
            e = tok.encode(text)
            feed = ort_feed(e)
            ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
            got = sess.run(["logits"], feed)[0]
            worst = max(worst, float(np.abs(ref - got).max()))
            argmax_same += int(ref.argmax() == got.argmax())
    ok = worst <= a.tol
    print(json.dumps({"texts": len(texts), "max_abs_logit_diff": worst, "tolerance": a.tol,
                      "same_label": argmax_same, "ok": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
