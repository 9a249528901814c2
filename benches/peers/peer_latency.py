#!/usr/bin/env python3
"""Dev-only: batch-1 per-text latency WITH tokenization, in process, over a texts file, the way
a user would call the model one request at a time:

  torch: transformers' fast tokenizer (AutoTokenizer) + BertForSequenceClassification (float32,
         inference_mode), torch.set_num_threads(N), interop 1;
  ort:   the `tokenizers` library on tokenizer.json + an ONNX Runtime session on the exported
         model (benches/peers/export_onnx.py; ORT_ENABLE_ALL, intra_op N, inter_op 1).

Every text is classified once as warm-up, then --passes times in file order; each call is timed
from the text (str) to the label and score. --gap-ms sleeps that long before each timed call,
as `classifyd bench --gap-ms` does: one request at a time after a quiet spell, the pattern in
which idle threads have gone to sleep and caches gone cold. Writes JSON: latency percentiles in microseconds
(end to end, and the tokenization part alone), to stdout or --out.

Usage: peer_latency.py torch|ort [--texts FILE] [--threads 2] [--passes 3] [--gap-ms 0]
                        [--onnx FILE] [--out FILE]
"""
import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peerlib import LABELS, MODEL, ROOT, load_tokenizer, ort_classify, ort_session, percentiles, read_texts  # noqa: E402


def torch_classifier(threads):
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = BertForSequenceClassification.from_pretrained(MODEL, dtype=torch.float32).eval()
    versions = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}

    def tokenize(text):
        return tok(text, truncation=True, max_length=512, return_tensors="pt")

    def classify(text):
        t0 = time.perf_counter()
        enc = tokenize(text)
        t1 = time.perf_counter()
        with torch.inference_mode():
            probs = model(**enc).logits[0].softmax(-1)
        i = int(probs.argmax())
        return LABELS[i], float(probs[i]), t1 - t0
    return classify, versions


def ort_classifier(threads, onnx_path):
    import onnxruntime as ort
    import tokenizers
    if not Path(onnx_path).exists():
        raise SystemExit(f"{onnx_path} missing: run benches/peers/export_onnx.py first")
    run = ort_classify(load_tokenizer(), ort_session(onnx_path, threads))
    versions = {"onnxruntime": ort.__version__, "tokenizers": tokenizers.__version__}

    def classify(text):
        label, score, tokenize_s, _ = run(text)
        return label, score, tokenize_s
    return classify, versions


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("engine", choices=["torch", "ort"])
    ap.add_argument("--texts", type=Path, default=ROOT / "benches/texts/tweets.txt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--gap-ms", type=float, default=0.0)
    ap.add_argument("--onnx", type=Path, default=ROOT / "benches/peers/out/sentiment-minilm.onnx")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    texts = read_texts(a.texts)
    if a.engine == "torch":
        classify, versions = torch_classifier(a.threads)
    else:
        classify, versions = ort_classifier(a.threads, a.onnx)
    for t in texts:
        classify(t)
    total, tok = [], []
    positive = 0
    start = time.perf_counter()
    for _ in range(a.passes):
        for t in texts:
            if a.gap_ms > 0:
                time.sleep(a.gap_ms / 1e3)
            t0 = time.perf_counter()
            label, _score, tok_s = classify(t)
            total.append((time.perf_counter() - t0) * 1e6)
            tok.append(tok_s * 1e6)
            positive += label == "POSITIVE"
    wall = time.perf_counter() - start
    result = {
        "system": a.engine, "versions": versions, "threads": a.threads, "batch": 1,
        "gap_ms": a.gap_ms, "onnx": a.onnx.name if a.engine == "ort" else None,
        "texts": str(a.texts.relative_to(ROOT) if a.texts.is_relative_to(ROOT) else a.texts),
        "requests": len(total), "positive": positive,
        "throughput_rps": round(len(total) / wall, 1),
        "latency_us": percentiles(total), "tokenize_us": percentiles(tok),
        "host": platform.node(), "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(result, indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    l = result["latency_us"]
    print(f"{a.engine} gap {a.gap_ms:g} ms: n={len(total)} p50 {l['p50'] / 1e3:.2f} ms, p90 {l['p90'] / 1e3:.2f} ms, "
          f"p99 {l['p99'] / 1e3:.2f} ms, max {l['max'] / 1e3:.2f} ms; "
          f"tokenize p50 {result['tokenize_us']['p50']:.0f} us", file=sys.stderr)
    if not a.out:
        print(text)


if __name__ == "__main__":
    main()
