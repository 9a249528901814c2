#!/usr/bin/env python3
"""Dev-only: one of benches/arch.sh's model directories (benches/peers/make_shape.py) exported
to ONNX fp32 (dynamic batch and sequence, eager attention, the dynamo exporter) and quantized
with ONNX Runtime's dynamic int8, one scale per output channel (quantize_dynamic, QInt8,
per_channel=True): the two peers arch.sh times beside classifyd. ORT fp32's logits are checked
against PyTorch's on a few texts (max |diff| <= 1e-3) before anything is timed.

Usage: export_shape.py MODEL_DIR OUT_STEM   (writes OUT_STEM.onnx and OUT_STEM-int8-pc.onnx)
Needs torch, transformers, onnx, onnxscript and onnxruntime; never commit the outputs.
"""
import inspect
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peerlib import load_tokenizer, ort_feed, ort_session  # noqa: E402

TEXTS = ["what a wonderful film", "the service was slow and the food was cold",
         "meh", "I would not recommend this to anyone I like, but it has its moments"]


def main():
    model_dir, stem = Path(sys.argv[1]), Path(sys.argv[2])
    fp32, int8 = stem.with_suffix(".onnx"), Path(f"{stem}-int8-pc.onnx")
    torch.set_num_threads(2)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    # A decoder would also return its key/value cache, which the exporter cannot flatten.
    model.config.use_cache = False
    # Each family's forward takes these first, in this order, where it takes them at all.
    params = inspect.signature(model.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in params]
    if "token_type_ids" in names and not getattr(model.config, "type_vocab_size", 0):
        names.remove("token_type_ids")
    tok = load_tokenizer()
    if not fp32.exists():
        stem.parent.mkdir(parents=True, exist_ok=True)
        ids = torch.tensor([tok.encode(TEXTS[1]).ids] * 2)
        args = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "token_type_ids": torch.zeros_like(ids)}
        batch, seq = torch.export.Dim("batch", max=1024), torch.export.Dim("sequence", max=512)
        with torch.inference_mode():
            program = torch.onnx.export(
                model, tuple(args[n] for n in names), dynamo=True,
                input_names=names, output_names=["logits"],
                dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                opset_version=18, external_data=False, optimize=True)
        program.save(str(fp32))
    sess = ort_session(fp32, threads=2)
    wanted = {i.name for i in sess.get_inputs()}
    worst = 0.0
    with torch.inference_mode():
        for text in TEXTS:
            enc = tok.encode(text)
            feed = {k: v for k, v in ort_feed(enc).items() if k in wanted}
            want = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits[0].numpy()
            got = sess.run(["logits"], feed)[0][0]
            worst = max(worst, float(np.abs(got - want).max()))
    print(f"{fp32.name}: ORT fp32 against PyTorch, max |diff| {worst:.2e}", file=sys.stderr)
    if worst > 1e-3:
        raise SystemExit(f"{fp32}: ORT fp32 disagrees with PyTorch by {worst}")
    if not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    print(f"{int8.name}: {int8.stat().st_size / 1e6:.0f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
