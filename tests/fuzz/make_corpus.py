#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write the hand-made seed corpus for the fuzz harnesses (run from anywhere).

corpus/sqe/*     one struct lorad_sqe each (128 bytes)
corpus/region/*  the start of a session region laid out as region_layout_compute
                 makes it for sq 8, cq 8, arena 64 KiB; the rest of the region
                 is zero. Bytes 0-8 steer the harness (see fuzz_region.c).
"""
import math
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATE, CANCEL = 1, 2
# region layout for sq 8, cq 8, arena 64 KiB, as region_layout_compute makes it
SQ_CTL, CQ_CTL, SQES, ARENA = 128, 320, 576, 4096


def sqe(user_data=1, tag=1, opcode=GENERATE, kind=0, prio=0, rsvd=0, flags=0, max_tokens=8,
        prompt_off=0, prompt_len=16, out_off=64, out_len=32, ext_off=0, ext_len=0,
        routing_key=0, seed=0, deadline=0, temperature=0.0, top_p=1.0, min_p=0.0, rep=1.0,
        presence=0.0, top_k=0, skill=b""):
    return struct.pack("<QIBBBBIIIIIIIIQQQfffffI32s", user_data, tag, opcode, kind, prio, rsvd,
                       flags, max_tokens, prompt_off, prompt_len, out_off, out_len, ext_off,
                       ext_len, routing_key, seed, deadline, temperature, top_p, min_p, rep,
                       presence, top_k, skill)


def region(sq0, cq0, ctl, sq_tail, cq_head, sqes, arena=b""):
    b = bytearray(ARENA + max(len(arena), 64))
    struct.pack_into("<IIB", b, 0, sq0, cq0, ctl)
    struct.pack_into("<I", b, SQ_CTL, sq0)          # sq.head: the daemon's to write
    struct.pack_into("<I", b, SQ_CTL + 64, sq_tail)
    struct.pack_into("<I", b, CQ_CTL, cq_head)
    struct.pack_into("<I", b, CQ_CTL + 64, cq0)      # cq.tail: the daemon's to write
    for i, e in enumerate(sqes):
        slot = (sq0 + i) % 8
        b[SQES + slot * 128:SQES + slot * 128 + 128] = e
    b[ARENA:ARENA + len(arena)] = arena
    return bytes(b)


def write(kind, name, data):
    d = os.path.join(HERE, "corpus", kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


prompt = struct.pack("<8I", *range(100, 108))

write("sqe", "valid", sqe())
write("sqe", "valid-skill", sqe(skill=b"sql@v7", flags=1, temperature=0.7, top_k=40))
write("sqe", "cancel", sqe(opcode=CANCEL, kind=0, max_tokens=0, prompt_len=0, out_off=0,
                           out_len=0, top_p=0.0, rep=0.0))
write("sqe", "nan-temperature", sqe(temperature=math.nan))
write("sqe", "prompt-wraps", sqe(prompt_off=0xfffffffc, prompt_len=8))
write("sqe", "skill-unterminated", sqe(skill=b"a" * 32))
write("sqe", "output-small", sqe(out_len=28))

two = [sqe(1, 1, prompt_off=0, prompt_len=16, out_off=64, out_len=32, max_tokens=8),
       sqe(2, 2, prompt_off=128, prompt_len=8, out_off=192, out_len=16, max_tokens=4)]
write("region", "two-valid", region(0, 0, 1, 2, 0, two, prompt * 20))
write("region", "wrap", region(0xfffffffe, 0xfffffffd, 1, 1, 0xfffffffd, two + [two[0]],
                               prompt * 20))
write("region", "tail-too-far", region(5, 0, 1, 5 + 9, 0, two, prompt))
write("region", "cq-full", region(0, 8, 0, 4, 0, two * 2, prompt * 20))
write("region", "cq-head-ahead", region(0, 3, 1, 2, 7, two, prompt * 20))
bad = [sqe(10, prompt_off=0xfffffffc, prompt_len=8), sqe(11, temperature=math.nan),
       sqe(12, opcode=0), sqe(13, rsvd=1), sqe(14, skill=b"b" * 32), sqe(15, out_len=4),
       sqe(16, out_off=8), sqe(17, opcode=CANCEL, tag=1, kind=0, max_tokens=0, prompt_len=0,
                               out_off=0, out_len=0, top_p=0.0, rep=0.0)]
write("region", "invalid-entries", region(0, 0, 3, 8, 0, bad, prompt * 20))
