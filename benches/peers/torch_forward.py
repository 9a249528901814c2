#!/usr/bin/env python3
"""Dev-only peer figures for benches/forward.rs: PyTorch + transformers running the committed
default model on the same ids (exactly 16 and 64 tokens, batch 1/8/32), same thread count.

Prints one line per case: median and p90 milliseconds over the timed iterations.
Needs: pip install -r scripts/requirements-dev.txt
"""
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertForSequenceClassification

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "sentiment-minilm"
# Must stay identical to TEXT in benches/forward.rs.
TEXT = ("the film opens with a quiet scene in a small town where nothing much happens, "
        "and yet every frame feels deliberate; the actors carry the story with restraint, the music "
        "never tells you what to feel, and by the end the slow pace has earned its emotional payoff "
        "in a way few recent dramas manage, and the final scene lingers in the mind long after the "
        "credits have rolled")


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = BertForSequenceClassification.from_pretrained(MODEL).float().eval()
    full = tok(TEXT)["input_ids"]
    print(f"torch {torch.__version__}, {threads} threads")
    for tokens in (16, 64):
        ids = full[: tokens - 1] + full[-1:]
        for batch in (1, 8, 32):
            x = torch.tensor([ids] * batch)
            mask = torch.ones_like(x)
            with torch.inference_mode():
                for _ in range(5):
                    model(input_ids=x, attention_mask=mask)
                times = []
                deadline = time.perf_counter() + 3.0
                while time.perf_counter() < deadline or len(times) < 10:
                    t = time.perf_counter()
                    model(input_ids=x, attention_mask=mask)
                    times.append((time.perf_counter() - t) * 1e3)
            times.sort()
            p90 = times[int(len(times) * 0.9)]
            print(f"forward/{tokens}tok/b{batch}: median {statistics.median(times):.3f} ms, "
                  f"p90 {p90:.3f} ms, n={len(times)}")


if __name__ == "__main__":
    main()
