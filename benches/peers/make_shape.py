"""Random-weight models of the base shapes people fine-tune, for benches/arch.sh (dev only).

    python benches/peers/make_shape.py SHAPE OUT_DIR

SHAPE is bert-base, distilbert-base, deberta-v3-base, modernbert-base or qwen3-0.6b. The weight names and
config come from the committed tiny fixture of the same family (tests/fixtures/), with every
dimension mapped to the base shape's and the layers repeated; the tokenizer is the default
model's (vocab 30,522). Weights are seeded normal(0, 0.02) in F32, norms 1: the speed of a real
checkpoint of that shape, not its answers. Needs numpy and safetensors; never commit the output.
"""
import json
import os
import re
import shutil
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
VOCAB = 30522

# fixture, layers, {fixture dim: base dim}, config overrides, {name suffix: shape}
SHAPES = {
    "bert-base": ("bert", 12, {32: 768, 64: 3072, 500: VOCAB}, {
        "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
        "num_hidden_layers": 12, "vocab_size": VOCAB, "max_position_embeddings": 512,
    }, {"position_embeddings.weight": [512, 768]}),
    "distilbert-base": ("distilbert", 6, {64: 768, 128: 3072, 450: VOCAB}, {
        "dim": 768, "hidden_dim": 3072, "n_heads": 12, "n_layers": 6, "vocab_size": VOCAB,
        "max_position_embeddings": 512,
    }, {"position_embeddings.weight": [512, 768]}),
    "deberta-v3-base": ("deberta-v2", 12, {32: 768, 64: 3072, 400: VOCAB}, {
        "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
        "num_hidden_layers": 12, "pooler_hidden_size": 768, "position_buckets": 256,
        "max_position_embeddings": 512, "vocab_size": VOCAB,
    }, {"rel_embeddings.weight": [512, 768]}),
    "modernbert-base": ("modernbert", 22, {32: 768, 64: 1152, 96: 2304, 128: 2304, 450: VOCAB}, {
        "hidden_size": 768, "intermediate_size": 1152, "num_attention_heads": 12,
        "num_hidden_layers": 22, "global_attn_every_n_layers": 3, "local_attention": 128,
        "max_position_embeddings": 8192, "vocab_size": VOCAB, "pad_token_id": 0,
        "cls_token_id": 101, "sep_token_id": 102, "layer_types": None,
    }, {}),
    # A decoder classifier (Qwen3ForSequenceClassification): 28 layers, GQA 16/8 heads of 128.
    "qwen3-0.6b": ("qwen3", 28, {48: 1024, 80: 3072, 16: 128, 32: 1024, 64: 2048, 400: VOCAB}, {
        "hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16,
        "num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 28, "vocab_size": VOCAB,
        "max_position_embeddings": 40960, "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": 28, "layer_types": None,
    }, {}),
}


def main():
    shape, out = sys.argv[1], sys.argv[2]
    fixture, layers, dims, config, special = SHAPES[shape]
    src = os.path.join(ROOT, "tests", "fixtures", fixture)
    rng = np.random.default_rng(7)
    tensors = {}
    with safe_open(os.path.join(src, "model.safetensors"), "np") as f:
        for name in sorted(f.keys()):
            m = re.search(r"\.(layer|layers)\.(\d+)\.", name)
            # Layer 0 may differ (ModernBERT's has no attention norm); layer 1 stands for the rest.
            targets = [name]
            if m:
                i = int(m.group(2))
                if i > 1:
                    continue
                at = [0] if i == 0 else range(1, layers)
                targets = [name[: m.start(2)] + str(t) + name[m.end(2):] for t in at]
            fixed = f.get_slice(name).get_shape()
            for target in targets:
                dims_of = next((s for k, s in special.items() if target.endswith(k)), None)
                size = dims_of or [dims.get(d, d) for d in fixed]
                if "norm" in target.lower() and target.endswith("weight"):
                    tensors[target] = np.ones(size, np.float32)
                else:
                    tensors[target] = (rng.standard_normal(size, dtype=np.float32) * 0.02)
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "model.safetensors"))
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg.update({k: v for k, v in config.items() if v is not None})
    for k in [k for k, v in config.items() if v is None]:
        cfg.pop(k, None)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
    model = os.path.join(ROOT, "models", "sentiment-minilm")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(model, name)):
            shutil.copy(os.path.join(model, name), out)
    params = sum(t.size for t in tensors.values())
    print(f"{shape}: {params} parameters in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
