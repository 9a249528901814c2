#!/usr/bin/env python3
"""Generate tiny random token-classification (NER/PII) fixtures + golden outputs.

Dev-only. Run from the crate root after (or without) scripts/make_fixtures.py:

    /work/venv/bin/python scripts/make_token_fixtures.py [name ...]

Writes tests/fixtures/tok-<family>/{config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, golden.json}, one per encoder family's `*ForTokenClassification`. The
tokenizers are the sequence fixtures' (WordPiece, byte-level BPE, Unigram), so every way the
pipeline decides what a sub-word is gets exercised.

golden.json holds, per text: the ids, char offsets and special-tokens mask transformers' fast
tokenizer gives, the F32 logits of every token, and the entities of transformers'
token-classification pipeline for each aggregation strategy (none, simple, first, average,
max), exactly as the pipeline returns them. A padded batch of every case is checked against the
one-at-a-time logits here (≤ 1e-4) and stored too. Deterministic (fixed seeds).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    BertForTokenClassification,
    DebertaV2Config,
    DebertaV2ForTokenClassification,
    DistilBertConfig,
    DistilBertForTokenClassification,
    ElectraConfig,
    ElectraForTokenClassification,
    Gemma2Config,
    Gemma2ForTokenClassification,
    LlamaConfig,
    LlamaForTokenClassification,
    MistralConfig,
    MistralForTokenClassification,
    ModernBertConfig,
    ModernBertForTokenClassification,
    Qwen2Config,
    Qwen2ForTokenClassification,
    Qwen3Config,
    Qwen3ForTokenClassification,
    RobertaConfig,
    RobertaForTokenClassification,
    XLMRobertaConfig,
    XLMRobertaForTokenClassification,
    pipeline,
)
from transformers.utils import logging as hf_logging

from make_fixtures import (  # scripts/ is on the path when this script runs
    COMMON, KEEP, LONG_SENTENCE, OUT, OVERLONG, UNICODE, padded, randomize_1d, sig7,
    start_fixture)

torch.set_num_threads(1)
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore")

# BIO tags, a tag with no B-/I- prefix (the pipeline treats it as a continuation) and one with
# a hyphen inside that is not a prefix ("ID-NUM": its group is named "NUM", as transformers'
# `split("-", 1)[-1]` names it).
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "EMAIL", "ID-NUM"]
ID2LABEL = dict(enumerate(LABELS))
LABEL2ID = {v: k for k, v in ID2LABEL.items()}
STRATEGIES = ["none", "simple", "first", "average", "max"]

CASES = [
    "Maria Lopez flew from Madrid to New York on Tuesday.",
    "Contact john.smith@example.com or call +1 555 0100 before 5pm.",
    "Dr. Ünal Çelik visited the 東京 office — ref #A-1234, naïve café.",
    "it's  double  spaced\tand\ttabbed   text",
    "The acting was excellent, especially the older brother, whose quiet anger carried the story.",
    "great movie",
    "",
    "a",
    "   ",
    LONG_SENTENCE,
    *UNICODE,
    "emoji 😀😀 in the middle 👍🏽 and at the end 🎉",
    OVERLONG,
]


def fixtures():
    tok_kw = dict(id2label=ID2LABEL, label2id=LABEL2ID)
    return [
        dict(name="tok-bert", tok=("wordpiece", 500), dtype=torch.float32,
             input_names=["input_ids", "token_type_ids", "attention_mask"],
             model=lambda v, sp: (BertForTokenClassification, BertConfig(
                 vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
                 hidden_act="gelu", pad_token_id=sp["pad"], **tok_kw, **COMMON))),
        dict(name="tok-distilbert", tok=("wordpiece", 450), dtype=torch.bfloat16,
             input_names=["input_ids", "attention_mask"],
             model=lambda v, sp: (DistilBertForTokenClassification, DistilBertConfig(
                 vocab_size=v, dim=64, n_layers=2, n_heads=8, hidden_dim=128,
                 max_position_embeddings=64, activation="gelu", pad_token_id=sp["pad"],
                 dropout=0.0, attention_dropout=0.0, initializer_range=0.3, **tok_kw))),
        dict(name="tok-roberta", tok=("bpe-roberta", 450), dtype=torch.float16,
             input_names=["input_ids", "attention_mask"],
             model=lambda v, sp: (RobertaForTokenClassification, RobertaConfig(
                 vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=66, type_vocab_size=1,
                 pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_act="gelu",
                 **tok_kw, **COMMON))),
        dict(name="tok-xlm-roberta", tok=("unigram-xlmr", 400), dtype=torch.float32,
             input_names=["input_ids", "attention_mask"],
             model=lambda v, sp: (XLMRobertaForTokenClassification, XLMRobertaConfig(
                 vocab_size=v, hidden_size=40, num_hidden_layers=2, num_attention_heads=5,
                 intermediate_size=80, max_position_embeddings=66, type_vocab_size=1,
                 pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_act="gelu",
                 **tok_kw, **COMMON))),
        dict(name="tok-electra", tok=("wordpiece", 480), dtype=torch.float32,
             input_names=["input_ids", "token_type_ids", "attention_mask"],
             model=lambda v, sp: (ElectraForTokenClassification, ElectraConfig(
                 vocab_size=v, embedding_size=16, hidden_size=48, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=96, max_position_embeddings=64,
                 type_vocab_size=2, hidden_act="gelu", pad_token_id=sp["pad"],
                 **tok_kw, **COMMON))),
        dict(name="tok-modernbert", tok=("bpe-modernbert", 450), dtype=torch.float32,
             input_names=["input_ids", "attention_mask"],
             model=lambda v, sp: (ModernBertForTokenClassification, ModernBertConfig(
                 vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=4, max_position_embeddings=64, local_attention=8,
                 global_attn_every_n_layers=2, global_rope_theta=160000.0,
                 local_rope_theta=10000.0, hidden_activation="gelu",
                 classifier_activation="gelu", pad_token_id=sp["pad"],
                 cls_token_id=sp["cls"], sep_token_id=sp["sep"], bos_token_id=sp["cls"],
                 eos_token_id=sp["sep"], initializer_range=0.3, attn_implementation="eager",
                 **tok_kw))),
        dict(name="tok-deberta-v2", tok=("unigram-deberta", 400), dtype=torch.float32,
             input_names=["input_ids", "token_type_ids", "attention_mask"],
             model=lambda v, sp: (DebertaV2ForTokenClassification, DebertaV2Config(
                 vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64, type_vocab_size=0,
                 relative_attention=True, position_buckets=16, max_relative_positions=-1,
                 pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
                 position_biased_input=False, hidden_act="gelu", pad_token_id=sp["pad"],
                 layer_norm_eps=1e-7, **tok_kw, **COMMON))),
        # Decoders (transformers' GenericForTokenClassification: a biased `score` over every
        # token, causal attention): Qwen3 with a tokenizer that adds nothing (so "" is no
        # tokens and refused) and a window shorter than the texts; Llama with a BOS.
        dict(name="tok-qwen3", tok=("bpe-qwen", 400), dtype=torch.float32,
             input_names=["input_ids", "attention_mask"],
             model=lambda v, sp: (Qwen3ForTokenClassification, Qwen3Config(
                 vocab_size=v, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, intermediate_size=80,
                 max_position_embeddings=128, use_sliding_window=True, sliding_window=5,
                 max_window_layers=1, pad_token_id=sp["pad"], tie_word_embeddings=False,
                 initializer_range=0.2, **tok_kw))),
        dict(name="tok-llama", tok=("bpe-llama", 400), dtype=torch.bfloat16,
             input_names=["input_ids", "attention_mask"],
             model=lambda v, sp: (LlamaForTokenClassification, LlamaConfig(
                 vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                 pad_token_id=sp["pad"], bos_token_id=0, eos_token_id=1,
                 tie_word_embeddings=False, initializer_range=0.2, **tok_kw))),
        # Qwen2's Q/K/V bias, Mistral's window, Gemma 2's 1 + w sandwich norms, embedding
        # scale and softcapping, each under the generic token head.
        dict(name="tok-qwen2", tok=("bpe-qwen", 400), dtype=torch.float32,
             input_names=["input_ids", "attention_mask"],
             model=lambda v, sp: (Qwen2ForTokenClassification, Qwen2Config(
                 vocab_size=v, hidden_size=40, num_hidden_layers=2, num_attention_heads=5,
                 num_key_value_heads=1, intermediate_size=72, max_position_embeddings=128,
                 pad_token_id=sp["pad"], tie_word_embeddings=False, initializer_range=0.2,
                 **tok_kw))),
        dict(name="tok-mistral", tok=("bpe-llama", 400), dtype=torch.float16,
             input_names=["input_ids", "attention_mask"],
             model=lambda v, sp: (MistralForTokenClassification, MistralConfig(
                 vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=1, intermediate_size=48, max_position_embeddings=128,
                 sliding_window=6, pad_token_id=sp["pad"], bos_token_id=0, eos_token_id=1,
                 tie_word_embeddings=False, initializer_range=0.2, **tok_kw))),
        dict(name="tok-gemma2", tok=("bpe-llama", 400), dtype=torch.float32,
             input_names=["input_ids", "attention_mask"],
             model=lambda v, sp: (Gemma2ForTokenClassification, Gemma2Config(
                 vocab_size=v, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=12, intermediate_size=56,
                 max_position_embeddings=128, sliding_window=5, query_pre_attn_scalar=20,
                 attn_logit_softcapping=2.0, pad_token_id=sp["pad"], bos_token_id=0,
                 eos_token_id=1, initializer_range=0.2, **tok_kw))),
    ]


def plain(v):
    """numpy scalars → Python numbers, recursively."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return sig7(v)
    return v


def make_fixture(fx: dict) -> None:
    name = fx["name"]
    out, tok, special, sp, model = start_fixture(fx, 64, 29)
    randomize_1d(model)
    with torch.no_grad():
        # Spread the logits (no near-ties to flip between implementations) and favour "O", so
        # entities come in runs with gaps between them, as a real tagger's do.
        head = model.score if hasattr(model, "score") else model.classifier
        head.weight.mul_(3.0)
        # "O" wins about half the tokens of the cases: its bias moves near the median margin,
        # to the middle of the widest gap between two tokens' margins there, so that no
        # token's label is a near-tie that rounding could flip.
        margins = []
        for text in CASES:
            enc = tok.encode(text)
            if not enc.ids:
                continue
            logits = model(input_ids=torch.tensor([enc.ids[:64]])).logits[0]
            margins += (logits[:, 1:].max(dim=-1).values - logits[:, 0]).tolist()
        margins.sort()
        lo, hi = int(len(margins) * 0.35), int(len(margins) * 0.65)
        gap, at = max((margins[i + 1] - margins[i], i) for i in range(lo, hi))
        head.bias[0] += (margins[at] + margins[at + 1]) / 2
    if fx["dtype"] != torch.float32:
        model = model.to(fx["dtype"])
    model.save_pretrained(str(out), safe_serialization=True)
    for f in os.listdir(out):
        if f not in KEEP:
            os.remove(out / f)

    cfg_json = json.loads((out / "config.json").read_text())
    load_kwargs = dict(dtype=torch.float32)
    if cfg_json.get("model_type") == "modernbert":
        load_kwargs["attn_implementation"] = "eager"
    model = AutoModelForTokenClassification.from_pretrained(str(out), **load_kwargs).float().eval()
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    max_pos = cfg_json["max_position_embeddings"]
    if cfg_json["model_type"] in ("roberta", "xlm-roberta"):
        max_pos -= cfg_json["pad_token_id"] + 1
    max_length = min(64, max_pos)
    assert hf_tok.model_max_length == 64

    pipes = {s: pipeline("token-classification", model=model, tokenizer=hf_tok,
                         aggregation_strategy=s, device=-1) for s in STRATEGIES}
    cases = []
    for text in CASES:
        enc = hf_tok(text, truncation=True, max_length=max_length, return_offsets_mapping=True,
                     return_special_tokens_mask=True)
        ids = list(enc["input_ids"])
        if not ids:
            # No tokens at all (a tokenizer that adds none, on ""): refused, not classified.
            cases.append(dict(text=text, input_ids=[], token_type_ids=[], refused=True))
            continue
        tt = list(enc["token_type_ids"]) if "token_type_ids" in enc else [0] * len(ids)
        with torch.no_grad():
            kw = dict(input_ids=torch.tensor([ids]),
                      attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            if "token_type_ids" in enc and cfg_json.get("type_vocab_size", 0) > 0:
                kw["token_type_ids"] = torch.tensor([tt])
            logits = model(**kw).logits[0].tolist()
        entities = {s: plain([dict(e) for e in pipes[s](text)]) for s in STRATEGIES}
        cases.append(dict(text=text, input_ids=ids, token_type_ids=tt,
                          offsets=[list(o) for o in enc["offset_mapping"]],
                          special=list(enc["special_tokens_mask"]),
                          token_logits=[[sig7(x) for x in row] for row in logits],
                          entities=entities))

    refused = [c for c in cases if c.get("refused")]
    cases = [c for c in cases if not c.get("refused")]
    ids_b, tt_b, mask_b = padded(cases, hf_tok.pad_token_id)
    with torch.no_grad():
        kw = dict(input_ids=ids_b, attention_mask=mask_b)
        if "token_type_ids" in fx["input_names"] and cfg_json.get("type_vocab_size", 0) > 0:
            kw["token_type_ids"] = tt_b
        batch = model(**kw).logits
    worst = 0.0
    for i, c in enumerate(cases):
        n = len(c["input_ids"])
        worst = max(worst, (batch[i, :n] - torch.tensor(c["token_logits"])).abs().max().item())
    if worst > 1e-4:
        raise AssertionError(f"{name}: batch vs single token logits differ by {worst:.3g}")

    golden = dict(architecture=cfg_json["architectures"][0], task="token",
                  max_length=max_length, labels=LABELS, cases=cases + refused)
    (out / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n",
                                     encoding="utf-8")
    n_ent = sum(len(c["entities"]["simple"]) for c in cases if "entities" in c)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"== {name}: {size / 1024:.0f} KiB, max_length={max_length}, "
          f"max|batch-single|={worst:.2e}, simple entities={n_ent}")


def main(argv):
    only = set(argv[1:])
    for fx in fixtures():
        if only and fx["name"] not in only:
            continue
        make_fixture(fx)


if __name__ == "__main__":
    main(sys.argv)
