#!/usr/bin/env python3
"""Dev-only: the decoder-classifier benchmark's PyTorch side and its model (issue #15).

  make OUT     a random Qwen3ForSequenceClassification of Qwen3-0.6B's shape (28 layers,
               hidden 1024, 16 heads, 8 KV heads of 128, intermediate 3072, vocab 151,936,
               2 labels), BF16 safetensors (~1.2 GB), with the qwen3 fixture's tokenizer.
               Never committed: benches/peers/out/ is git-ignored.
  texts OUT    tweets of 25-35 tokens under that tokenizer, one per line.
  torch DIR TEXTS [--threads 2] [--passes 1] [--gap-ms 0]
               batch-1 latency with tokenization, as peer_latency.py measures the encoders:
               AutoTokenizer + the model at float32, inference_mode; every text once as
               warm-up, then timed. JSON on stdout: p50/p90/p99 (µs) and the peak RSS.
"""
import json
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "qwen3"


def make(out: Path) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForSequenceClassification
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                      intermediate_size=3072, max_position_embeddings=40960, rope_theta=1e6,
                      pad_token_id=0, tie_word_embeddings=False, num_labels=2)
    model = Qwen3ForSequenceClassification(cfg).to(torch.bfloat16).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURE / f, out / f)
    print(f"made {out}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters",
          file=sys.stderr)


def texts(out: Path) -> None:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    lines = (ROOT / "benches" / "texts" / "tweets.txt").read_text().splitlines()
    keep = [t for t in lines if 25 <= len(tok.encode(t).ids) <= 35]
    out.write_text("\n".join(keep) + "\n")
    print(f"{len(keep)} texts of 25-35 tokens", file=sys.stderr)


def percentile(sorted_us, q):
    return sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))]


def report(peer: str, times_us: list, threads: int, gap_ms: float) -> None:
    """One JSON line: the latencies' p50/p90/p99 (µs) and this process's peak RSS."""
    import torch
    times_us = sorted(times_us)
    print(json.dumps({
        "peer": peer, "torch": torch.__version__, "threads": threads, "n": len(times_us),
        "gap_ms": gap_ms,
        "latency_us": {q: round(percentile(times_us, p)) for q, p in
                       (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


def bench_torch(model_dir: str, texts_path: str, threads: int, passes: int, gap_ms: float):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=torch.float32).eval()
    lines = [t for t in Path(texts_path).read_text().splitlines() if t]

    def classify(text):
        enc = tok(text, truncation=True, max_length=512, return_tensors="pt")
        with torch.inference_mode():
            return int(model(**enc).logits[0].argmax())

    for t in lines:
        classify(t)
    times = []
    for _ in range(passes):
        for t in lines:
            if gap_ms:
                time.sleep(gap_ms / 1000)
            t0 = time.perf_counter()
            classify(t)
            times.append((time.perf_counter() - t0) * 1e6)
    report("torch", times, threads, gap_ms)


def main(argv):
    if len(argv) >= 3 and argv[1] == "make":
        return make(Path(argv[2]))
    if len(argv) >= 3 and argv[1] == "texts":
        return texts(Path(argv[2]))
    if len(argv) >= 4 and argv[1] == "torch":
        opts = dict(zip(argv[4::2], argv[5::2]))
        return bench_torch(argv[2], argv[3], int(opts.get("--threads", 2)),
                           int(opts.get("--passes", 1)), float(opts.get("--gap-ms", 0)))
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
