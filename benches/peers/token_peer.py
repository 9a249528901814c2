#!/usr/bin/env python3
"""Dev-only: the token-classification benchmark's PyTorch side and its model (issue #15).

  make OUT     a BertForTokenClassification with the default model's body (all-MiniLM-L6-v2
               fine-tuned, models/sentiment-minilm: 6 layers, hidden 384) and a random 9-label
               CoNLL-style head (O, B-/I-PER, ORG, LOC, MISC), F32 safetensors, with the default
               model's tokenizer. Never committed: benches/peers/out/ is git-ignored.
  torch DIR TEXTS [--threads 2] [--gap-ms 0] [--mode pipeline|model]
               batch-1 latency per text, tokenization included, every text once as warm-up:
               `pipeline`: transformers' token-classification pipeline, aggregation "simple"
               (what classifyd's default answer is); `model`: tokenizer + model forward + a
               numpy argmax per token, no grouping (the floor under any Python NER service).
               JSON on stdout: p50/p90/p99 (µs) and the peak RSS.
"""
import shutil
import sys
import time
from pathlib import Path

from decoder_peer import report  # benches/peers/ is on the path when this script runs

ROOT = Path(__file__).resolve().parents[2]
BODY = ROOT / "models" / "sentiment-minilm"
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def make(out: Path) -> None:
    import torch
    from transformers import BertConfig, BertForTokenClassification
    from safetensors.torch import load_file
    cfg = BertConfig.from_pretrained(str(BODY))
    cfg.architectures = ["BertForTokenClassification"]
    cfg.id2label = dict(enumerate(LABELS))
    cfg.label2id = {v: k for k, v in enumerate(LABELS)}
    torch.manual_seed(0)
    model = BertForTokenClassification(cfg).eval()
    body = {k.removeprefix("bert."): v.float() for k, v in load_file(str(BODY / "model.safetensors")).items()
            if k.startswith("bert.") and ".pooler." not in k}
    missing, unexpected = model.bert.load_state_dict(body, strict=False)
    assert not unexpected, unexpected
    assert all("pooler" in m for m in missing), missing
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BODY / f, out / f)
    print(f"made {out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters",
          file=sys.stderr)


def bench_torch(model_dir: str, texts_path: str, threads: int, gap_ms: float, mode: str):
    import numpy as np
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    lines = [t for t in Path(texts_path).read_text().splitlines() if t]
    if mode == "pipeline":
        pipe = pipeline("token-classification", model=model, tokenizer=tok,
                        aggregation_strategy="simple", device=-1)

        def run(text):
            return pipe(text)
    else:
        def run(text):
            enc = tok(text, truncation=True, max_length=512, return_tensors="pt")
            with torch.inference_mode():
                return np.argmax(model(**enc).logits[0].numpy(), axis=-1)

    for t in lines:
        run(t)
    times = []
    for t in lines:
        if gap_ms:
            time.sleep(gap_ms / 1000)
        t0 = time.perf_counter()
        run(t)
        times.append((time.perf_counter() - t0) * 1e6)
    report(f"torch-{mode}", times, threads, gap_ms)


def main(argv):
    if len(argv) >= 3 and argv[1] == "make":
        return make(Path(argv[2]))
    if len(argv) >= 4 and argv[1] == "torch":
        opts = dict(zip(argv[4::2], argv[5::2]))
        return bench_torch(argv[2], argv[3], int(opts.get("--threads", 2)),
                           float(opts.get("--gap-ms", 0)), opts.get("--mode", "pipeline"))
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
