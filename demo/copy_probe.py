#!/usr/bin/python3
"""How well the committed demo base copies held-out slot values by itself.

    /usr/bin/python3 demo/copy_probe.py [--unseen]

A diagnostic for retraining (seconds, no training): the skill adapters can
copy a value from the prompt only as well as the base can. For each kind of
value it places one held-out value among common words and greedily asks the
base for the copy, in two frames: a bare one ([<s>] x [newline], the
id-copying frame of the first training phase) and a text frame of the base
corpus ("Text: x\\nThe same text:"). A value counts when the copy holds it
exactly, so the first word of the line may be lost without penalty.
--unseen draws the values from demo/unseen.py's sets instead.
"""
import json
import os
import random
import re
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ARGS, sys.argv = sys.argv[1:], sys.argv[:1]
sys.path.insert(0, HERE)
import train as T  # noqa: E402
from skills import Unseen  # noqa: E402


def main():
    model_dir = os.path.join(HERE, "model")
    tj = json.load(open(os.path.join(model_dir, "tokenizer.json")))
    tok = T.Tokenizer([tuple(m.split(" ")) for m in tj["model"]["merges"]])
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    T.VOCAB = cfg["vocab_size"]
    _, weights, _, _ = T.ref.load_model_dir(model_dir)
    net = T.Net(torch.Generator().manual_seed(0))
    net.load(weights)
    pools = T.Pools(T.SEED)
    if "--unseen" in ARGS:
        pools = Unseen(pools)     # pick() ignores held: the unseen sets
    nl = tok.vocab[T.BYTE_CHR[10]]
    rng = random.Random(5)
    n = 40
    for kind in ("name", "city", "product", "age", "amount", "oid"):
        got = {}
        for frame in ("bare", "text"):
            ok = 0
            for _ in range(n):
                v = pools.pick(True, kind, rng)
                words = [rng.choice(T.GENERAL_WORDS) for _ in range(2)] + [v, rng.choice(T.GENERAL_WORDS)]
                line = " ".join(words)
                x = tok.encode(" " + line)
                p = [T.BOS] + x + [nl] if frame == "bare" else \
                    tok.encode("Text: " + line + "\nThe same text:", add_special=True)
                start = len(p)
                with torch.no_grad():
                    for _ in range(len(x) + 1):
                        p.append(int(net(torch.tensor([p]))[0, -1].argmax()))
                out = tok.decode(p[start:])
                ok += bool(re.search(r"(?<![0-9A-Za-z])" + re.escape(v) + r"(?![0-9A-Za-z])", out))
            got[frame] = 100 * ok / n
        print(f"{kind:8s} bare {got['bare']:5.1f} %   text {got['text']:5.1f} %", flush=True)


if __name__ == "__main__":
    main()
