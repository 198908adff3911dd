#!/usr/bin/env python3
"""Make a lorad-mkmodel model answer every chat with "Hi!" and the end of
the turn, for test_http_chat.sh.

usage: chat_model.py MODEL_DIR TOKENIZER_JSON HEADER_END END_TOKEN

Attention and the MLP are zeroed (o_proj, down_proj), so the next token
depends on the last one alone: the token that ends the assistant's header
(HEADER_END, e.g. "\\n") is followed by "Hi", "Hi" by "!", "!" by
END_TOKEN, and every other token by END_TOKEN too, each by a margin that
no sampling at temperature <= 2 overturns.
"""
import array
import json
import struct
import sys

model, tok_path, header_end, end = sys.argv[1:5]
with open(tok_path) as f:
    tok = json.load(f)
vocab = dict(tok["model"]["vocab"])
for a in tok["added_tokens"]:
    vocab[a["content"]] = a["id"]


def byte_level(s):
    """GPT-2's bytes-to-unicode spelling of s."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xa1, 0xad)) + list(range(0xae, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, map(chr, cs)))
    return "".join(table[b] for b in s.encode())


ids = [vocab[byte_level(header_end)], vocab["Hi"], vocab["!"], vocab[end]]
path = model + "/model.safetensors"
with open(path, "rb") as f:
    raw = f.read()
n = struct.unpack("<Q", raw[:8])[0]
head = json.loads(raw[8:8 + n])
data = bytearray(raw[8 + n:])


def tensor(name):
    t = head[name]
    assert t["dtype"] == "F32"
    a, b = t["data_offsets"]
    return a, b, t["shape"]


def write(name, values):
    a, b, _ = tensor(name)
    data[a:b] = array.array("f", values).tobytes()


V, H = tensor("model.embed_tokens.weight")[2]
for name in head:
    if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
        a, b, _ = tensor(name)
        data[a:b] = bytes(b - a)
write("model.norm.weight", [1.0] * H)
# embeddings: a direction for each of the chain's tokens (1, 2, 3), dim 0 for the rest
emb = array.array("f", [0.0]) * (V * H)
for t in range(V):
    emb[t * H] = 1.0
for k, t in enumerate(ids[:3]):
    emb[t * H] = 0.0
    emb[t * H + k + 1] = 1.0
write("model.embed_tokens.weight", emb)
head_w = array.array("f", [0.0]) * (V * H)
head_w[ids[1] * H + 1] = 10.0      # after the header: "Hi"
head_w[ids[2] * H + 2] = 10.0      # after "Hi": "!"
head_w[ids[3] * H + 3] = 10.0      # after "!": the end of the turn
head_w[ids[3] * H + 0] = 10.0      # after anything else: the end of the turn
write("lm_head.weight", head_w)
with open(path, "wb") as f:
    f.write(raw[:8 + n])
    f.write(data)
print(" ".join(map(str, ids)))
