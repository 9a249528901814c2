#!/usr/bin/env python3
"""GPU peer figures for scripts/gpu-check.sh: PyTorch + transformers running the default model
on the same GPU and the same texts as `classifyd bench`.

Measures, in the given dtype (fp16 by default, what `classifyd serve` uses on CUDA):
- batch 1, one text at a time in file order, end to end as a client of classifyd sees it
  (tokenize, upload, forward, softmax, copy to host) and forward only (ids already on the GPU);
- a few batch sizes over the texts (padded to the longest in each batch), texts per second.

Prints one JSON object on stdout. Needs only what the GPU machines have: torch, transformers.
Usage: torch_gpu_peer.py --model DIR --texts FILE [--dtype fp16|bf16|fp32] [--seconds S]
"""
import argparse
import json
import sys
import time


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def summary_us(samples_s):
    v = sorted(s * 1e6 for s in samples_s)
    return {
        "n": len(v),
        "p50": round(percentile(v, 0.50), 1),
        "p90": round(percentile(v, 0.90), 1),
        "p99": round(percentile(v, 0.99), 1),
        "max": round(v[-1], 1),
        "mean": round(sum(v) / len(v), 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--texts", required=True)
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="time spent on each measurement (after warm-up)")
    ap.add_argument("--batch-sizes", default="8,32,64")
    ap.add_argument("--device", default="cuda", help="cpu only to try this script without a GPU")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print(json.dumps({"error": "torch sees no CUDA device"}))
        return 2
    dev = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    texts = [t for t in open(args.texts, encoding="utf-8").read().split("\n") if t.strip()]
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, dtype=dtype)
    model = model.to(dev).eval()
    # Which attention transformers picked (sdpa or eager): part of what is being compared.
    attn = getattr(model.config, "_attn_implementation", None)

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    def end_to_end(text):
        enc = tok(text, return_tensors="pt", truncation=True)
        enc = {k: v.to(dev, non_blocking=True) for k, v in enc.items()}
        logits = model(**enc).logits
        return torch.softmax(logits.float(), dim=-1).cpu()

    out = {
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "dtype": args.dtype,
        "attn_implementation": attn,
        "texts": len(texts),
    }
    with torch.inference_mode():
        # Warm-up: cuBLAS heuristics, the allocator, kernel caches, for every shape class.
        for t in texts[:50]:
            end_to_end(t)
        sync()

        # Batch 1, end to end, in file order (cycling), like a closed loop at concurrency 1.
        samples, i = [], 0
        deadline = time.perf_counter() + args.seconds
        while time.perf_counter() < deadline or len(samples) < 50:
            t0 = time.perf_counter()
            end_to_end(texts[i % len(texts)])
            samples.append(time.perf_counter() - t0)
            i += 1
        out["batch1_end_to_end_us"] = summary_us(samples)

        # Batch 1, forward only: ids pre-uploaded, one synchronize per forward.
        pre = []
        for t in texts:
            enc = tok(t, return_tensors="pt", truncation=True)
            pre.append({k: v.to(dev) for k, v in enc.items()})
        sync()
        samples, i = [], 0
        deadline = time.perf_counter() + args.seconds
        while time.perf_counter() < deadline or len(samples) < 50:
            enc = pre[i % len(pre)]
            t0 = time.perf_counter()
            model(**enc).logits
            sync()
            samples.append(time.perf_counter() - t0)
            i += 1
        out["batch1_forward_us"] = summary_us(samples)

        # Batched throughput: tokenize + forward + copy back, padded per batch.
        batches = {}
        for bs in [int(b) for b in args.batch_sizes.split(",") if b]:
            chunks = [texts[j:j + bs] for j in range(0, len(texts), bs)]
            for c in chunks[:3]:
                enc = tok(c, return_tensors="pt", padding=True, truncation=True).to(dev)
                model(**enc).logits.float().cpu()
            sync()
            n, lat, j = 0, [], 0
            t_start = time.perf_counter()
            deadline = t_start + args.seconds / 2
            while time.perf_counter() < deadline or j < len(chunks):
                c = chunks[j % len(chunks)]
                t0 = time.perf_counter()
                enc = tok(c, return_tensors="pt", padding=True, truncation=True).to(dev)
                torch.softmax(model(**enc).logits.float(), dim=-1).cpu()
                lat.append(time.perf_counter() - t0)
                n += len(c)
                j += 1
            elapsed = time.perf_counter() - t_start
            batches[str(bs)] = {
                "texts_per_s": round(n / elapsed, 1),
                "batch_latency_us": summary_us(lat),
            }
        out["batched"] = batches
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
