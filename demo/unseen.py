#!/usr/bin/python3
"""Prompts whose values training never saw: demo/unseen.jsonl.

    /usr/bin/python3 demo/unseen.py          # writes demo/unseen.jsonl

demo/heldout.jsonl holds prompts whose values are held out from the same
pools training draws from (syllable-made names, a fixed product list, ages
from 20 to 89). A user types other things: real names and cities, other
products, an age of 93, an order id like 77744. This script makes
N_PER_SKILL prompts per skill from the sets of demo/skills.py's UNSEEN part
(disjoint from every training value: asserted there and, against every word
of the training texts, in demo/train.py), with json prompts of two to six
pairs, with a fixed seed, and writes them in heldout.jsonl's format
({"skill", "prompt", "expected"}). No prompt is also in heldout.jsonl.
`make run` sends them through the daemon beside the held-out table.
"""
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from skills import SKILL_GEN, Pools, Unseen  # noqa: E402

SEED = 20240610          # Pools' seed: the same pools as demo/train.py
UNSEEN_SEED = 20261204
N_PER_SKILL = 60


def unseen_examples(pools):
    """{skill: [(prompt, expected), ...]}: N_PER_SKILL distinct prompts each."""
    src = Unseen(pools)
    try:
        with open(os.path.join(HERE, "heldout.jsonl")) as f:
            heldout = set(json.loads(line)["prompt"] for line in f)
    except FileNotFoundError:
        heldout = set()
    out = {}
    for i, (s, gen) in enumerate(SKILL_GEN.items()):
        rng = random.Random(UNSEEN_SEED + i)
        seen, exs = set(), []
        while len(exs) < N_PER_SKILL:
            p, o = gen(src, True, rng)
            if p not in seen and p not in heldout:
                seen.add(p)
                exs.append((p, o))
        out[s] = exs
    return out


def main():
    exs = unseen_examples(Pools(SEED))
    path = os.path.join(HERE, "unseen.jsonl")
    with open(path, "w") as f:
        for s, items in exs.items():
            for p, o in items:
                f.write(json.dumps({"skill": s, "prompt": p, "expected": o},
                                   ensure_ascii=False) + "\n")
    print(f"unseen: {sum(len(v) for v in exs.values())} prompts in {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
