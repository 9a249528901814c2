"""Shared helpers for the dev-only peer scripts in benches/peers/ (not part of the crate)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "sentiment-minilm"
LABELS = ("NEGATIVE", "POSITIVE")  # id2label of models/sentiment-minilm/config.json


def read_texts(path):
    texts = [line.rstrip("\n") for line in Path(path).read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise SystemExit(f"{path}: no texts")
    return texts


def load_tokenizer():
    """The `tokenizers` library on the model's own tokenizer.json (truncation at 512, as
    transformers and classifyd do; the committed file has padding and truncation removed)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(512)
    return tok


def ort_session(path, threads=2):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_feed(encoding):
    """ONNX Runtime inputs for one `tokenizers` encoding (batch of one, int64 as exported)."""
    import numpy as np
    return {"input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64)}


def ort_classify(tok, sess):
    """One text through `tok` and the ONNX Runtime session `sess`, as classifyd answers it:
    returns (label, score, seconds tokenizing, seconds in the session)."""
    import time

    import numpy as np

    # A graph exported without segments (DistilBERT, DeBERTa-v3, ModernBERT) takes no
    # token_type_ids.
    wanted = {i.name for i in sess.get_inputs()}

    def classify(text):
        t0 = time.perf_counter()
        feed = {k: v for k, v in ort_feed(tok.encode(text)).items() if k in wanted}
        t1 = time.perf_counter()
        logits = sess.run(["logits"], feed)[0][0]
        t2 = time.perf_counter()
        p = np.exp(logits - logits.max())
        p /= p.sum()
        i = int(p.argmax())
        return LABELS[i] if i < len(LABELS) else str(i), float(p[i]), t1 - t0, t2 - t1
    return classify


def percentiles(values_us):
    """p50/p90/p99/p99.9/max/mean of a list of microsecond latencies (nearest rank)."""
    if not values_us:
        return {k: None for k in ("p50", "p90", "p99", "p999", "max", "mean")}
    v = sorted(values_us)

    def rank(q):
        i = max(0, min(len(v) - 1, int(-(-q * len(v) // 1)) - 1))
        return round(v[i], 1)
    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "p999": rank(0.999),
            "max": round(v[-1], 1), "mean": round(sum(v) / len(v), 1)}
