#!/usr/bin/env python3
"""Generate tiny random Hugging Face sequence-classifier fixtures + golden logits.

Dev-only. Run from the crate root:

    /work/venv/bin/python scripts/make_fixtures.py

Writes tests/fixtures/<name>/{config.json, model.safetensors (or shards + index),
tokenizer.json, tokenizer_config.json, golden.json}. Deterministic (fixed seeds).
Requires torch, transformers (>= 5), tokenizers, safetensors, numpy.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import sys
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    Gemma2Config,
    Gemma2ForSequenceClassification,
    Gemma3Config,
    Gemma3ForSequenceClassification,
    Gemma3TextConfig,
    Gemma3TextForSequenceClassification,
    SiglipVisionConfig,
    LlamaConfig,
    LlamaForSequenceClassification,
    MistralConfig,
    MistralForSequenceClassification,
    Qwen2Config,
    Qwen2ForSequenceClassification,
    Qwen3Config,
    Qwen3ForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)
from transformers.utils import logging as hf_logging

torch.set_num_threads(1)
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures"
KEEP = {"config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
        "tokenizer_config.json", "golden.json"}

# --------------------------------------------------------------------------------------------
# Corpus + test cases
# --------------------------------------------------------------------------------------------

UNICODE = ["naïve café — déjà vu 😀", "日本語のテキスト", "Ünïcödé ßtraße"]

LONG_SENTENCE = ("The film opens slowly with a quiet scene in a small coastal town, but by the "
                 "second act the story builds real tension and the performances feel honest and "
                 "moving throughout.")  # ~33 words

OVERLONG = " ".join([
    "I went to see this movie on a rainy Sunday afternoon with a few friends from work, and none "
    "of us really knew what to expect going in.",
    "The trailer had promised an action packed thriller, yet what we got was a slow, thoughtful "
    "drama about a family trying to hold itself together after a long and difficult winter.",
    "The acting was excellent, especially the older brother, whose quiet anger carried most of "
    "the emotional weight of the story.",
    "The music was sparse but effective, and the camera work made the cold landscape feel both "
    "beautiful and threatening at the same time.",
    "Still, the pacing dragged in the middle, and several scenes could have been cut without "
    "losing anything important.",
    "By the end, two of my friends were bored and checking their phones, while the rest of us "
    "were surprisingly moved.",
    "I would recommend it to patient viewers who enjoy character studies, but anyone hoping for "
    "explosions and car chases should probably look elsewhere.",
    "Overall it is a flawed but memorable film that stayed with me for days afterwards.",
])
assert len(OVERLONG.split()) > 150, len(OVERLONG.split())

SINGLE_CASES = [
    "great movie",
    "",
    "a",
    "The service was slow, but the food more than made up for it.",
    LONG_SENTENCE,
    *UNICODE,
    "   ",
    OVERLONG,
]

PAIR_CASES = [
    ("Is the movie good?", "The movie was great fun."),
    ("A man is playing a guitar.", "Someone plays an instrument on stage."),
    ("How was the food?", OVERLONG),  # exercises longest_first truncation of a pair
]


def make_corpus() -> list[str]:
    rng = random.Random(1234)
    subjects = ["the movie", "this film", "the food", "our waiter", "the hotel", "my phone",
                "the book", "the game", "the service", "this album", "the show", "the actor",
                "the story", "the team", "a friend", "the city"]
    verbs = ["was", "is", "seemed", "felt", "looked", "became", "remained", "sounded"]
    adjs = ["great", "terrible", "boring", "amazing", "slow", "fast", "beautiful", "awful",
            "fine", "excellent", "disappointing", "funny", "sad", "quiet", "loud", "cheap",
            "expensive", "good", "bad", "strange", "honest", "moving"]
    tails = ["", " today", " last night", " overall", " at first", " in the end",
             " for the price", " to be honest", " on a rainy day", " with friends"]
    corpus = []
    combos = list(itertools.product(subjects, verbs, adjs, tails))
    rng.shuffle(combos)
    for s, v, a, t in combos[:500]:
        sent = f"{s} {v} {a}{t}."
        corpus.append(sent[0].upper() + sent[1:])
    corpus += SINGLE_CASES + [x for p in PAIR_CASES for x in p]
    corpus += UNICODE * 5
    corpus += ["Héllo wörld, ça va? Ñandú, façade, jalapeño, smörgåsbord.",
               "東京は大きな都市です。日本語を勉強しています。", "Straße, Größe, Ärger, Übung, Öl."]
    return corpus


CORPUS = make_corpus()

# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


def _word_counts(tok: Tokenizer) -> Counter:
    """Pre-tokenized (normalised) words of the corpus with their counts."""
    words: Counter = Counter()
    for line in CORPUS:
        text = tok.normalizer.normalize_str(line) if tok.normalizer is not None else line
        for w, _ in tok.pre_tokenizer.pre_tokenize_str(text):
            words[w] += 1
    return words


def _ranked(counter: Counter) -> list[str]:
    return [k for k, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]


# The `tokenizers` trainers (WordPiece, Unigram) are not deterministic across runs (hash-map
# iteration order breaks ties), so WordPiece and Unigram vocabularies are built here directly
# from corpus statistics with explicit tie-breaking. The BPE trainer is deterministic.


def wordpiece_tokenizer(vocab_size: int) -> tuple[Tokenizer, dict]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = _word_counts(tok)
    chars = sorted({c for w in words for c in w})
    vocab = specials + chars + ["##" + c for c in chars]
    cands: Counter = Counter()
    for w, n in words.items():
        if len(w) > 1:
            cands[w] += 2 * n * len(w)
        for k in range(2, min(5, len(w))):
            cands[w[:k]] += n * k
            cands["##" + w[-k:]] += n * k
    seen = set(vocab)
    for t in _ranked(cands):
        if len(vocab) >= vocab_size:
            break
        if t not in seen:
            vocab.append(t)
            seen.add(t)
    tok.model = models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]",
                                 continuing_subword_prefix="##", max_input_chars_per_word=100)
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(specials)
    ids = {t: tok.token_to_id(t) for t in specials}
    assert ids["[PAD]"] == 0
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    st = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
              mask_token="[MASK]")
    return tok, st


def bytelevel_bpe_tokenizer(vocab_size: int, style: str) -> tuple[Tokenizer, dict]:
    if style == "roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    elif style == "llama":  # a BOS before every text, nothing after; pad = eos
        specials = ["<s>", "</s>", "<unk>"]
    elif style == "qwen":  # nothing added; pad = eos = <|endoftext|>
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    else:  # modernbert-style: BPE with [CLS]/[SEP] template
        specials = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    ids = {t: tok.token_to_id(t) for t in specials}
    assert [ids[t] for t in specials] == list(range(len(specials))), ids
    if style == "roberta":
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
        st = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                  cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    elif style == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", ids["<s>"])])
        st = dict(bos_token="<s>", eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    elif style == "qwen":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        st = dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
        st = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                  mask_token="[MASK]")
    return tok, st


def unigram_tokenizer(vocab_size: int, style: str) -> tuple[Tokenizer, dict]:
    if style == "xlmr":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        unk = "<unk>"
    else:  # deberta-v3
        specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
        unk = "[UNK]"
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    words = _word_counts(tok)
    subs: Counter = Counter()
    for w, n in words.items():
        for i in range(len(w)):
            for j in range(i + 1, min(len(w), i + 6) + 1):
                subs[w[i:j]] += n
    chars = sorted({c for w in words for c in w})
    multi = sorted((x for x in subs if len(x) > 1), key=lambda x: (-subs[x] * len(x), x))
    pieces = chars + multi[: vocab_size - len(specials) - len(chars)]
    total = sum(subs[x] for x in pieces)
    vocab = [(x, 0.0) for x in specials] + [
        (x, math.log(subs[x] / total)) for x in sorted(pieces, key=lambda x: (-subs[x], x))]
    tok.model = models.Unigram(vocab, unk_id=specials.index(unk), byte_fallback=False)
    tok.add_special_tokens(specials)
    ids = {t: tok.token_to_id(t) for t in specials}
    assert [ids[t] for t in specials] == list(range(len(specials))), ids
    if style == "xlmr":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", 0), ("</s>", 2)])
        st = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                  cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
        st = dict(bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return tok, st


def save_tokenizer(tok: Tokenizer, special: dict, out: Path, model_max_length: int | None,
                   model_input_names: list[str]) -> None:
    tok.no_padding()
    tok.no_truncation()
    kwargs = dict(tokenizer_object=tok, model_input_names=model_input_names,
                  padding_side="right", truncation_side="right", **special)
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    PreTrainedTokenizerFast(**kwargs).save_pretrained(str(out))
    # Guarantee no padding / truncation in the saved pipeline.
    path = out / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["padding"] = None
    data["truncation"] = None
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------

COMMON = dict(initializer_range=0.3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _scale_params(model, names, factor):
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if any(n in pname for n in names):
                p.mul_(factor)


def fixtures():
    """name -> (builder(), tokenizer spec, extra). Builders return (model_cls, config)."""
    return [
        dict(name="bert", tok=("wordpiece", 500), model_max_length=64, pairs=True,
             input_names=["input_ids", "token_type_ids", "attention_mask"], dtype=torch.float32,
             model=lambda v, sp: (BertForSequenceClassification, BertConfig(
                 vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
                 hidden_act="gelu", pad_token_id=sp["pad"],
                 id2label={0: "neg", 1: "neu", 2: "pos"},
                 label2id={"neg": 0, "neu": 1, "pos": 2}, **COMMON))),
        # Query and key weights ×40: unscaled q·k reaches ~1e5, past F16's 65,504, so a model
        # that forms Q·Kᵀ before scaling it overflows at F16 (tests/engine/half.rs).
        dict(name="bert-hot", tok=("wordpiece", 500), model_max_length=64, pairs=False,
             input_names=["input_ids", "token_type_ids", "attention_mask"], dtype=torch.float32,
             post=lambda m: _scale_params(m, ("attention.self.query.", "attention.self.key."), 40.0),
             model=lambda v, sp: (BertForSequenceClassification, BertConfig(
                 vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
                 hidden_act="gelu", pad_token_id=sp["pad"],
                 id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}, **COMMON))),
        dict(name="bert-multilabel", tok=("wordpiece", 500), model_max_length=64, pairs=False,
             input_names=["input_ids", "token_type_ids", "attention_mask"], dtype=torch.float32,
             shard="100KB",
             model=lambda v, sp: (BertForSequenceClassification, BertConfig(
                 vocab_size=v, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                 intermediate_size=96, max_position_embeddings=64, type_vocab_size=2,
                 hidden_act="gelu_new", pad_token_id=sp["pad"],
                 problem_type="multi_label_classification",
                 id2label={0: "toxic", 1: "insult", 2: "threat", 3: "spam"},
                 label2id={"toxic": 0, "insult": 1, "threat": 2, "spam": 3}, **COMMON))),
        dict(name="distilbert", tok=("wordpiece", 450), model_max_length=64, pairs=False,
             input_names=["input_ids", "attention_mask"], dtype=torch.bfloat16,
             model=lambda v, sp: (DistilBertForSequenceClassification, DistilBertConfig(
                 vocab_size=v, dim=64, n_layers=2, n_heads=8, hidden_dim=128,
                 max_position_embeddings=64, activation="gelu", pad_token_id=sp["pad"],
                 dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0,
                 initializer_range=0.3,
                 id2label={0: "NEGATIVE", 1: "POSITIVE"},
                 label2id={"NEGATIVE": 0, "POSITIVE": 1}))),
        # model_max_length (512) > usable positions (64): exercises the position-embedding cap.
        dict(name="roberta", tok=("bpe-roberta", 450), model_max_length=512, pairs=True,
             input_names=["input_ids", "attention_mask"], dtype=torch.float16,
             model=lambda v, sp: (RobertaForSequenceClassification, RobertaConfig(
                 vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=66, type_vocab_size=1,
                 pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_act="gelu",
                 id2label={0: "negative", 1: "positive"},
                 label2id={"negative": 0, "positive": 1}, **COMMON))),
        dict(name="xlm-roberta", tok=("unigram-xlmr", 400), model_max_length=64, pairs=False,
             input_names=["input_ids", "attention_mask"], dtype=torch.float32,
             model=lambda v, sp: (XLMRobertaForSequenceClassification, XLMRobertaConfig(
                 vocab_size=v, hidden_size=40, num_hidden_layers=2, num_attention_heads=5,
                 intermediate_size=80, max_position_embeddings=66, type_vocab_size=1,
                 pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_act="gelu",
                 id2label={0: "negative", 1: "neutral", 2: "positive"},
                 label2id={"negative": 0, "neutral": 1, "positive": 2}, **COMMON))),
        # No model_max_length in tokenizer_config: max_length falls back to max positions.
        dict(name="electra", tok=("wordpiece", 480), model_max_length=None, pairs=False,
             input_names=["input_ids", "token_type_ids", "attention_mask"], dtype=torch.float32,
             model=lambda v, sp: (ElectraForSequenceClassification, ElectraConfig(
                 vocab_size=v, embedding_size=16, hidden_size=48, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=96, max_position_embeddings=64,
                 type_vocab_size=2, hidden_act="gelu", pad_token_id=sp["pad"],
                 id2label={0: "LABEL_0", 1: "LABEL_1"}, label2id={"LABEL_0": 0, "LABEL_1": 1},
                 **COMMON))),
        dict(name="modernbert", tok=("bpe-modernbert", 450), model_max_length=64, pairs=False,
             input_names=["input_ids", "attention_mask"], dtype=torch.float32,
             model=lambda v, sp: (ModernBertForSequenceClassification, ModernBertConfig(
                 vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=4, max_position_embeddings=64, local_attention=8,
                 global_attn_every_n_layers=2, global_rope_theta=160000.0,
                 local_rope_theta=10000.0, hidden_activation="gelu", classifier_pooling="cls",
                 pad_token_id=sp["pad"], cls_token_id=sp["cls"], sep_token_id=sp["sep"],
                 bos_token_id=sp["cls"], eos_token_id=sp["sep"], initializer_range=0.3,
                 attn_implementation="eager",
                 id2label={0: "negative", 1: "positive"},
                 label2id={"negative": 0, "positive": 1}))),
        dict(name="modernbert-mean", tok=("bpe-modernbert", 400), model_max_length=64,
             pairs=False, input_names=["input_ids", "attention_mask"], dtype=torch.float32,
             model=lambda v, sp: (ModernBertForSequenceClassification, ModernBertConfig(
                 vocab_size=v, hidden_size=40, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=2, max_position_embeddings=128, local_attention=16,
                 global_attn_every_n_layers=2, global_rope_theta=80000.0,
                 local_rope_theta=10000.0, hidden_activation="gelu", classifier_pooling="mean",
                 classifier_activation="gelu", pad_token_id=sp["pad"], cls_token_id=sp["cls"],
                 sep_token_id=sp["sep"], bos_token_id=sp["cls"], eos_token_id=sp["sep"],
                 initializer_range=0.3, attn_implementation="eager",
                 id2label={0: "negative", 1: "neutral", 2: "positive"},
                 label2id={"negative": 0, "neutral": 1, "positive": 2}))),
        dict(name="deberta-v2", tok=("unigram-deberta", 400), model_max_length=64, pairs=True,
             input_names=["input_ids", "token_type_ids", "attention_mask"], dtype=torch.float32,
             model=lambda v, sp: (DebertaV2ForSequenceClassification, DebertaV2Config(
                 vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64, type_vocab_size=0,
                 relative_attention=True, position_buckets=16, max_relative_positions=-1,
                 pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
                 position_biased_input=False, hidden_act="gelu", pad_token_id=sp["pad"],
                 layer_norm_eps=1e-7, pooler_hidden_size=32, pooler_hidden_act="gelu",
                 pooler_dropout=0.0,
                 id2label={0: "entailment", 1: "not_entailment"},
                 label2id={"entailment": 0, "not_entailment": 1}, **COMMON))),
        # DeBERTa-v2-xlarge style: separate pos key/query projections, conv layer, no buckets.
        dict(name="deberta-v2-conv", tok=("unigram-deberta", 400), model_max_length=64,
             pairs=False, input_names=["input_ids", "token_type_ids", "attention_mask"],
             dtype=torch.float32,
             model=lambda v, sp: (DebertaV2ForSequenceClassification, DebertaV2Config(
                 vocab_size=v, hidden_size=40, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=80, max_position_embeddings=64, type_vocab_size=0,
                 relative_attention=True, position_buckets=-1, max_relative_positions=24,
                 pos_att_type=["p2c", "c2p"], share_att_key=False, norm_rel_ebd="layer_norm",
                 conv_kernel_size=3, conv_act="gelu", position_biased_input=False,
                 hidden_act="gelu", pad_token_id=sp["pad"], layer_norm_eps=1e-7,
                 pooler_hidden_size=40, pooler_hidden_act="gelu", pooler_dropout=0.0,
                 id2label={0: "LABEL_0", 1: "LABEL_1"}, label2id={"LABEL_0": 0, "LABEL_1": 1},
                 **COMMON))),
        # Decoder classifiers. GQA everywhere; head_dim ≠ hidden/heads (Qwen3); sliding windows
        # shorter than most texts; a BOS tokenizer (Llama, Mistral) and one that adds nothing
        # (Qwen, where "" is no tokens at all and must be refused); RoPE llama3 and linear
        # scaling; 3 labels, regression and multi-label heads.
        dict(name="qwen3", tok=("bpe-qwen", 400), model_max_length=64, pairs=False, decoder=True,
             input_names=["input_ids", "attention_mask"], dtype=torch.float32,
             model=lambda v, sp: (Qwen3ForSequenceClassification, Qwen3Config(
                 vocab_size=v, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, intermediate_size=80,
                 max_position_embeddings=128, use_sliding_window=True, sliding_window=5,
                 max_window_layers=1, pad_token_id=sp["pad"], tie_word_embeddings=False,
                 initializer_range=0.2,
                 id2label={0: "negative", 1: "neutral", 2: "positive"},
                 label2id={"negative": 0, "neutral": 1, "positive": 2}))),
        dict(name="qwen2", tok=("bpe-qwen", 400), model_max_length=64, pairs=False, decoder=True,
             input_names=["input_ids", "attention_mask"], dtype=torch.bfloat16,
             model=lambda v, sp: (Qwen2ForSequenceClassification, Qwen2Config(
                 vocab_size=v, hidden_size=40, num_hidden_layers=2, num_attention_heads=5,
                 num_key_value_heads=1, intermediate_size=72, max_position_embeddings=128,
                 pad_token_id=sp["pad"], tie_word_embeddings=False, initializer_range=0.2,
                 problem_type="regression", id2label={0: "score"}, label2id={"score": 0}))),
        dict(name="llama", tok=("bpe-llama", 400), model_max_length=64, pairs=False, decoder=True,
             input_names=["input_ids", "attention_mask"], dtype=torch.float32,
             model=lambda v, sp: (LlamaForSequenceClassification, LlamaConfig(
                 vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                 attention_bias=True, pad_token_id=sp["pad"], bos_token_id=0, eos_token_id=1,
                 rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 16},
                 tie_word_embeddings=False, initializer_range=0.2,
                 id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1}))),
        dict(name="mistral", tok=("bpe-llama", 400), model_max_length=64, pairs=False,
             decoder=True, input_names=["input_ids", "attention_mask"], dtype=torch.float16,
             model=lambda v, sp: (MistralForSequenceClassification, MistralConfig(
                 vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=1, intermediate_size=48, max_position_embeddings=128,
                 sliding_window=6, pad_token_id=sp["pad"], bos_token_id=0, eos_token_id=1,
                 rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
                 tie_word_embeddings=False, initializer_range=0.2,
                 problem_type="multi_label_classification",
                 id2label={0: "toxic", 1: "pii", 2: "spam"},
                 label2id={"toxic": 0, "pii": 1, "spam": 2}))),
        # Gemma: 1 + w norms, √hidden embedding scale, query_pre_attn_scalar ≠ head_dim, a
        # window shorter than the texts; Gemma 2's softcapping (low, so that it bites) and
        # alternating layers; Gemma 3's Q/K norms, two RoPE bases and linear scaling on the
        # global one.
        dict(name="gemma2", tok=("bpe-llama", 400), model_max_length=64, pairs=False,
             decoder=True, input_names=["input_ids", "attention_mask"], dtype=torch.float32,
             model=lambda v, sp: (Gemma2ForSequenceClassification, Gemma2Config(
                 vocab_size=v, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=12, intermediate_size=56,
                 max_position_embeddings=128, sliding_window=5, query_pre_attn_scalar=20,
                 attn_logit_softcapping=2.0, pad_token_id=sp["pad"], bos_token_id=0,
                 eos_token_id=1, initializer_range=0.2,
                 id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1}))),
        dict(name="gemma3", tok=("bpe-llama", 400), model_max_length=64, pairs=False,
             decoder=True, input_names=["input_ids", "attention_mask"], dtype=torch.bfloat16,
             model=lambda v, sp: (Gemma3TextForSequenceClassification, Gemma3TextConfig(
                 vocab_size=v, hidden_size=40, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=16, intermediate_size=64,
                 max_position_embeddings=128, sliding_window=6, query_pre_attn_scalar=16,
                 sliding_window_pattern=3,
                 rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                                     "rope_theta": 1000000.0},
                                  "sliding_attention": {"rope_type": "default",
                                                        "rope_theta": 10000.0}},
                 pad_token_id=sp["pad"], bos_token_id=0, eos_token_id=1, initializer_range=0.2,
                 id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}))),
        # The multimodal class as text-only checkpoints of it ship: a tiny vision tower whose
        # weights are never read, the text model under model.language_model, text_config.
        dict(name="gemma3-mm", tok=("bpe-llama", 400), model_max_length=64, pairs=False,
             decoder=True, input_names=["input_ids", "attention_mask"], dtype=torch.float32,
             model=lambda v, sp: (Gemma3ForSequenceClassification, Gemma3Config(
                 text_config=Gemma3TextConfig(
                     vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=16, intermediate_size=48,
                     max_position_embeddings=128, sliding_window=4, query_pre_attn_scalar=16,
                     pad_token_id=sp["pad"], bos_token_id=0, eos_token_id=1,
                     initializer_range=0.2),
                 vision_config=SiglipVisionConfig(
                     hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, image_size=28, patch_size=14),
                 mm_tokens_per_image=4, initializer_range=0.2,
                 id2label={0: "benign", 1: "injection"},
                 label2id={"benign": 0, "injection": 1}))),
    ]


def build_tokenizer(spec):
    kind, vocab = spec
    if kind == "wordpiece":
        return wordpiece_tokenizer(vocab)
    if kind == "bpe-roberta":
        return bytelevel_bpe_tokenizer(vocab, "roberta")
    if kind == "bpe-modernbert":
        return bytelevel_bpe_tokenizer(vocab, "modernbert")
    if kind == "bpe-llama":
        return bytelevel_bpe_tokenizer(vocab, "llama")
    if kind == "bpe-qwen":
        return bytelevel_bpe_tokenizer(vocab, "qwen")
    if kind == "unigram-xlmr":
        return unigram_tokenizer(vocab, "xlmr")
    if kind == "unigram-deberta":
        return unigram_tokenizer(vocab, "deberta")
    raise ValueError(kind)


def sig7(x: float) -> float:
    return float(f"{x:.7g}")


def padded(cases: list[dict], pad_id: int):
    """Cases (`input_ids`, `token_type_ids`) as one right-padded batch: ids, segments, mask."""
    n = max(len(c["input_ids"]) for c in cases)
    ids = torch.full((len(cases), n), pad_id, dtype=torch.long)
    types = torch.zeros((len(cases), n), dtype=torch.long)
    mask = torch.zeros((len(cases), n), dtype=torch.long)
    for i, c in enumerate(cases):
        k = len(c["input_ids"])
        ids[i, :k] = torch.tensor(c["input_ids"])
        types[i, :k] = torch.tensor(c["token_type_ids"])
        mask[i, :k] = 1
    return ids, types, mask


def randomize_1d(model) -> None:
    """HF init sets LayerNorm/RMSNorm weights to 1 and biases to 0; randomise every 1-D
    parameter so that swapped/missing norm weights or biases change the logits."""
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                if pname.endswith("bias"):
                    p.copy_(0.2 * torch.randn_like(p))
                else:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))


def start_fixture(fx: dict, model_max_length: int | None, seed: int):
    """A fresh tests/fixtures/<name>/ with the fixture's tokenizer saved, and its random model
    (seeded from the name plus `seed`). Returns (out dir, tokenizer, special tokens, their
    ids, model)."""
    name = fx["name"]
    out = OUT / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    tok, special = build_tokenizer(fx["tok"])
    sp = {k: tok.token_to_id(special[f"{k}_token"]) for k in ("pad", "cls", "sep")
          if f"{k}_token" in special}
    save_tokenizer(tok, special, out, model_max_length, fx["input_names"])

    torch.manual_seed(sum(map(ord, name)) + seed)
    model_cls, config = fx["model"](tok.get_vocab_size(), sp)
    return out, tok, special, sp, model_cls(config).eval()


def make_fixture(fx: dict) -> None:
    name = fx["name"]
    out, tok, special, sp, model = start_fixture(fx, fx["model_max_length"], 17)
    randomize_1d(model)
    if "post" in fx:
        fx["post"](model)
    if fx["dtype"] != torch.float32:
        model = model.to(fx["dtype"])
    save_kwargs = dict(safe_serialization=True)
    if "shard" in fx:
        save_kwargs["max_shard_size"] = fx["shard"]
    model.save_pretrained(str(out), **save_kwargs)

    for f in os.listdir(out):
        if f not in KEEP and not (f.startswith("model-") and f.endswith(".safetensors")):
            os.remove(out / f)

    # ---- reload everything from disk, as a user would ----
    cfg_json = json.loads((out / "config.json").read_text())
    load_kwargs = dict(dtype=torch.float32)
    if cfg_json.get("model_type") == "modernbert":
        load_kwargs["attn_implementation"] = "eager"
    model = AutoModelForSequenceClassification.from_pretrained(str(out), **load_kwargs).float().eval()
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())

    max_pos = cfg_json.get("text_config", cfg_json)["max_position_embeddings"]
    if cfg_json["model_type"] in ("roberta", "xlm-roberta"):
        max_pos -= cfg_json["pad_token_id"] + 1
    mml = tok_cfg.get("model_max_length")
    max_length = min(mml, max_pos) if isinstance(mml, int) and mml < 10**9 else max_pos

    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert raw.padding is None and raw.truncation is None
    raw.enable_truncation(max_length, strategy="longest_first")

    cases = [(t, None) for t in SINGLE_CASES]
    if fx["pairs"]:
        cases += PAIR_CASES
    if fx.get("decoder"):
        # A text whose own last token is the pad id: transformers reads the token before it.
        cases.append((f"great movie{special['pad_token']}", None))

    golden_cases = []
    for text, pair in cases:
        enc = hf_tok(text, pair, truncation=True, max_length=max_length)
        ids = list(enc["input_ids"])
        if not ids:
            # No tokens at all (a tokenizer that adds none, on ""): refused, not classified.
            golden_cases.append(dict(text=text, text_pair=pair, input_ids=[], token_type_ids=[],
                                     refused=True))
            continue
        tt = list(enc["token_type_ids"]) if "token_type_ids" in enc else [0] * len(ids)
        r = raw.encode(text, pair, add_special_tokens=True)
        assert r.ids == ids, (name, text, pair, r.ids, ids)
        if "token_type_ids" in enc:
            assert r.type_ids == tt, (name, text, pair, r.type_ids, tt)
        assert len(ids) <= max_length
        with torch.no_grad():
            kw = dict(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            if "token_type_ids" in enc and cfg_json.get("type_vocab_size", 0) > 0:
                kw["token_type_ids"] = torch.tensor([tt])
            logits = model(**kw).logits[0].tolist()
        golden_cases.append(dict(text=text, text_pair=pair, input_ids=ids, token_type_ids=tt,
                                 logits=logits))

    # All cases as one right-padded batch (those refused left out).
    refused = [c for c in golden_cases if c.get("refused")]
    golden_cases = [c for c in golden_cases if not c.get("refused")]
    pad_id = hf_tok.pad_token_id
    assert pad_id == sp["pad"]
    ids_b, tt_b, mask_b = padded(golden_cases, pad_id)
    # Sanity: the manual padding equals what transformers itself produces.
    singles = [c for c in golden_cases if c["text_pair"] is None]
    if fx.get("decoder"):
        # The pad-id-ending case pads differently from what transformers' own padding gives.
        singles = [c for c in singles if c["input_ids"][-1] != pad_id]
    hf_b = hf_tok([c["text"] for c in singles], padding=True, truncation=True,
                  max_length=max_length, return_tensors="pt")
    Ls = hf_b["input_ids"].shape[1]
    assert torch.equal(hf_b["input_ids"], ids_b[: len(singles), :Ls]), name
    assert torch.equal(hf_b["attention_mask"], mask_b[: len(singles), :Ls]), name
    with torch.no_grad():
        kw = dict(input_ids=ids_b, attention_mask=mask_b)
        if "token_type_ids" in fx["input_names"] and cfg_json.get("type_vocab_size", 0) > 0:
            kw["token_type_ids"] = tt_b
        batch_logits = model(**kw).logits.tolist()

    worst = 0.0
    for c, b in zip(golden_cases, batch_logits):
        worst = max(worst, max(abs(x - y) for x, y in zip(c["logits"], b)))
    if worst > 1e-4:
        raise AssertionError(f"{name}: batch vs single logits differ by {worst:.3g}")

    for c in golden_cases:
        c["logits"] = [sig7(x) for x in c["logits"]]
    golden_cases += refused
    # transformers 5 omits id2label/label2id from config.json when they are the default
    # {0: "LABEL_0", 1: "LABEL_1"}; the loader must then assume 2 labels named LABEL_i.
    id2label = {str(k): v for k, v in model.config.id2label.items()}
    if "id2label" in cfg_json:
        assert cfg_json["id2label"] == id2label, (cfg_json["id2label"], id2label)
    golden = dict(
        architecture=cfg_json["architectures"][0],
        max_length=max_length,
        labels=[id2label[str(i)] for i in range(len(id2label))],
        problem_type=cfg_json.get("problem_type") or ("regression" if len(id2label) == 1
                                                      else "single_label_classification"),
        cases=golden_cases,
        batch_logits=[[sig7(x) for x in row] for row in batch_logits],
    )
    (out / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n",
                                     encoding="utf-8")

    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"== {name}: {size / 1024:.0f} KiB, max_length={max_length}, "
          f"max|batch-single|={worst:.2e}, files={sorted(os.listdir(out))}")
    print(f"   config keys: {sorted(cfg_json)}")


def main(argv):
    only = set(argv[1:])
    OUT.mkdir(parents=True, exist_ok=True)
    for fx in fixtures():
        if only and fx["name"] not in only:
            continue
        make_fixture(fx)


if __name__ == "__main__":
    main(sys.argv)
