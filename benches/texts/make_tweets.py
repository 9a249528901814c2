#!/usr/bin/env python3
"""Dev-only: writes benches/texts/tweets.txt, 300 tweets of 8-48 tokens (by the default model's
tokenizer, [CLS] and [SEP] included), one per line, from the VADER tweet set
(hutto_ICWSM_2014/tweets_GroundTruth.txt in the vaderSentiment 3.3.2 sdist, MIT licence).

Usage: make_tweets.py [path/to/vaderSentiment-3.3.2.tar.gz]
(default /work/py/vader/vaderSentiment-3.3.2.tar.gz; fetch it with
 pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /work/py/vader)
"""
import html
import io
import random
import sys
import tarfile
from pathlib import Path

from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
SDIST = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/py/vader/vaderSentiment-3.3.2.tar.gz")
OUT = ROOT / "benches" / "texts" / "tweets.txt"
COUNT, MIN_TOK, MAX_TOK, SEED = 300, 8, 48, 20261127


def tweets():
    with tarfile.open(SDIST) as outer:
        inner_bytes = outer.extractfile(
            "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        raw = inner.extractfile("hutto_ICWSM_2014/tweets_GroundTruth.txt").read()
    for line in raw.decode("utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        yield " ".join(html.unescape(parts[2]).split())


def main():
    tok = Tokenizer.from_file(str(ROOT / "models" / "sentiment-minilm" / "tokenizer.json"))
    seen, keep = set(), []
    for text in tweets():
        if not text or text in seen:
            continue
        seen.add(text)
        n = len(tok.encode(text).ids)
        if MIN_TOK <= n <= MAX_TOK:
            keep.append(text)
    random.Random(SEED).shuffle(keep)
    chosen = keep[:COUNT]
    assert len(chosen) == COUNT, len(chosen)
    OUT.write_text("".join(t + "\n" for t in chosen), encoding="utf-8")
    lens = sorted(len(tok.encode(t).ids) for t in chosen)
    print(f"{len(keep)} eligible; wrote {OUT} ({COUNT} lines), tokens min {lens[0]} "
          f"median {lens[len(lens) // 2]} max {lens[-1]}")


if __name__ == "__main__":
    main()
