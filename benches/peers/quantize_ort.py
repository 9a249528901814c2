#!/usr/bin/env python3
"""Dev-only: ONNX Runtime's dynamic int8 graphs of the default model, and how often their labels
agree with ONNX Runtime's own fp32 graph.

From out/sentiment-minilm.onnx (benches/peers/export_onnx.py) it writes, with
onnxruntime.quantization.quantize_dynamic (QInt8 weights, activations quantized at run time):

  out/sentiment-minilm-int8.onnx     the default: one scale per weight tensor;
  out/sentiment-minilm-int8-pc.onnx  per_channel=True: one scale per output channel, ORT's
                                     most accurate dynamic int8.

Then it classifies benches/texts/tweets.txt and the 2,014 held-out sentences
(tests/fixtures/sentiment-minilm-heldout, the texts tests/engine/int8.rs measures classifyd's int8
on) with all three graphs and reports, for each int8 graph, label agreement with fp32 and
held-out accuracy. These are the peers issue 19's targets are set against; run them in the same
run as classifyd with benches/sporadic.sh 'label|ort:benches/peers/out/…-int8-pc.onnx|'.

Usage: quantize_ort.py [--out FILE.json]
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peerlib import LABELS, ROOT, load_tokenizer, ort_classify, ort_session, read_texts  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
FP32 = OUT / "sentiment-minilm.onnx"
GRAPHS = {"per tensor": OUT / "sentiment-minilm-int8.onnx",
          "per channel": OUT / "sentiment-minilm-int8-pc.onnx"}


def quantize():
    from onnxruntime.quantization import QuantType, quantize_dynamic
    for name, path in GRAPHS.items():
        if not path.exists():
            quantize_dynamic(str(FP32), str(path), weight_type=QuantType.QInt8,
                             per_channel=(name == "per channel"))


def labels(path, texts):
    classify = ort_classify(load_tokenizer(), ort_session(path, 2))
    return [classify(t)[0] for t in texts]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    args = ap.parse_args()
    if not FP32.exists():
        raise SystemExit(f"{FP32} missing: run benches/peers/export_onnx.py first")
    quantize()
    golden = json.loads((ROOT / "tests/fixtures/sentiment-minilm-heldout/golden.json").read_text())
    sets = {"tweets": read_texts(ROOT / "benches/texts/tweets.txt"),
            "held-out": [c["text"] for c in golden["cases"]]}
    truth = [LABELS[c["label"]] for c in golden["cases"]]
    base = {name: labels(FP32, texts) for name, texts in sets.items()}
    report = {"fp32": {"held_out_accuracy": round(
        sum(a == b for a, b in zip(base["held-out"], truth)) / len(truth), 4)}}
    for graph, path in GRAPHS.items():
        entry = {"file": str(path.relative_to(ROOT))}
        for name, texts in sets.items():
            got = labels(path, texts)
            same = sum(a == b for a, b in zip(got, base[name]))
            entry[f"{name}_agreement"] = round(same / len(texts), 4)
            entry[f"{name}_differ"] = len(texts) - same
            if name == "held-out":
                entry["held_out_accuracy"] = round(
                    sum(a == b for a, b in zip(got, truth)) / len(truth), 4)
        report[graph] = entry
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
