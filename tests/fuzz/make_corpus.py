#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write the hand-made seed corpus for the fuzz harnesses (run from anywhere).

corpus/sqe/*     one struct lorad_sqe each (128 bytes)
corpus/region/*  the start of a session region laid out as region_layout_compute
                 makes it for sq 8, cq 8, arena 64 KiB; the rest of the region
                 is zero. Bytes 0-8 steer the harness (see fuzz_region.c).
corpus/session/* the region's first bytes up to the CQEs (header, both ring
                 control blocks, the 8 SQEs), then the arena from its start;
                 bytes 0-9 steer the harness (see fuzz_session.c).
"""
import math
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATE, CANCEL = 1, 2
# region layout for sq 8, cq 8, arena 64 KiB, as region_layout_compute makes it:
# the SQEs after the results header (ABI 1.3, 192 bytes at 576), the CQEs at
# SQES + 8 * 128, the arena at 4096. Check it against the C when the layout
# changes: entries left at the old offset land in a header the daemon never
# reads, and every seed is then one invalid entry of zeros.
SQ_CTL, CQ_CTL, SQES, ARENA = 128, 320, 768, 4096


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


# --- session: the real scheduler ---------------------------------------------------------------

SESS_CQES = SQES + 8 * 128     # where the input's arena starts
TEXT = 1
F_IGNORE_EOS, F_NO_SPECIAL, F_SERVED = 1, 2, 4
REAP, DRAIN, TRICKLE, SHUTDOWN, GONE, SEQ = 1, 2, 4, 8, 16, 32
SEQ_OFF = 15                   # struct lorad_sqe.seq


def ring_seq(idx, entries=8):
    """lorad_ring_seq(): the byte that publishes the entry at free-running index @idx."""
    return 0x80 | ((idx % 2**32) // entries & 0x7f)


class Arena:
    """Bump allocator over the arena; offset 0 is left unused (0 means "none" in the ext)."""

    def __init__(self):
        self.buf = bytearray(64)

    def alloc(self, n, align=8):
        off = (len(self.buf) + align - 1) // align * align
        self.buf += bytes(off + n - len(self.buf))
        return off

    def put(self, data, align=8):
        off = self.alloc(len(data), align)
        self.buf[off:off + len(data)] = data
        return off


def ext(a, n_stop=(), bias=(), min_tokens=0, stop_str=(), text_len=0, skill=False, served=False,
        times=False):
    """Write a struct lorad_ext (and its buffers) into the arena; returns (ext_off, ext_len)."""
    text_off = a.alloc(text_len, 1) if text_len else 0
    skill_off = a.alloc(96 if served else 32) if skill or served else 0
    times_off = a.alloc(32) if times else 0
    strs = b"".join(x + b"\0" for x in stop_str)
    blk = struct.pack("<8I", len(n_stop), len(bias), min_tokens, len(strs), text_off, text_len,
                      skill_off, times_off)
    blk += b"".join(struct.pack("<I", t) for t in n_stop)
    blk += b"".join(struct.pack("<If", t, b) for t, b in bias)
    blk += strs
    return a.put(blk, 4), len(blk)


def gen(a, tag, prompt, max_tokens=8, out_tokens=None, kind=None, **kw):
    """A GENERATE entry: @prompt is bytes (text) or a list of ids; output for @out_tokens ids."""
    if kind is None:
        kind = TEXT if isinstance(prompt, bytes) else 0
    data = prompt if isinstance(prompt, bytes) else struct.pack("<%dI" % len(prompt), *prompt)
    p_off = a.put(data, 4) if data else 0
    o_len = 4 * (out_tokens if out_tokens is not None else max_tokens)
    o_off = a.alloc(o_len, 4)
    return sqe(user_data=tag, tag=tag, kind=kind, max_tokens=max_tokens, prompt_off=p_off,
               prompt_len=len(data), out_off=o_off, out_len=o_len, **kw)


def session(sqes, a, ctl=REAP, rounds=12, sq0=0, cq0=0, sq_tail=None, cq_head=None, limit=0):
    b = bytearray(SESS_CQES)
    struct.pack_into("<IIBBB", b, 0, sq0, cq0, ctl, (rounds - 2) % 14, limit)
    struct.pack_into("<I", b, SQ_CTL, sq0)
    struct.pack_into("<I", b, SQ_CTL + 64, sq0 + len(sqes) if sq_tail is None else sq_tail)
    struct.pack_into("<I", b, CQ_CTL, cq0 if cq_head is None else cq_head)
    struct.pack_into("<I", b, CQ_CTL + 64, cq0)
    for i, e in enumerate(sqes):
        slot = (sq0 + i) % 8
        b[SQES + slot * 128:SQES + slot * 128 + 128] = e
        if ctl & SEQ and e[SEQ_OFF] == 0:
            # LORAD_FEAT_SEQ: published by its seq byte (one set already is kept)
            b[SQES + slot * 128 + SEQ_OFF] = ring_seq(sq0 + i)
    return bytes(b) + bytes(a.buf)


def text_of(n, seed=b"Which customers ordered twice? "):
    return (seed * (n // len(seed) + 1))[:n]


a = Arena()
write("session", "tokens-greedy", session([gen(a, 1, list(range(2, 18)))], a))

a = Arena()
x = ext(a, text_len=256, served=True, times=True)
write("session", "text-sql-served", session([
    gen(a, 1, b"Which customers ordered twice?", skill=b"sql", flags=F_SERVED, temperature=0.7,
        top_k=40, seed=7, ext_off=x[0], ext_len=x[1]),
    gen(a, 2, b"{\"a\": 1}", skill=b"json", top_p=0.9, min_p=0.05, rep=1.3, presence=0.5,
        ext_off=ext(a, text_len=64)[0], ext_len=32)], a))

# the inline prompt buffer is 256 bytes: text and token prompts on both sides of it
a = Arena()
write("session", "text-inline-edge", session(
    [gen(a, i + 1, text_of(n), max_tokens=2, ext_off=ext(a, text_len=16)[0], ext_len=32)
     for i, n in enumerate((255, 256, 257, 260))], a, rounds=6))
a = Arena()
write("session", "tokens-inline-edge", session(
    [gen(a, i + 1, [3 + k % 600 for k in range(n)], max_tokens=2) for i, n in enumerate((63, 64, 65))],
    a, rounds=6))

# text past TOKQ_INLINE_BYTES goes to the tokenizer thread; 1023..1025 bytes around a KiB
a = Arena()
write("session", "text-long", session(
    [gen(a, 1, text_of(4100, b" customers"), max_tokens=1),
     gen(a, 2, text_of(1023), max_tokens=1), gen(a, 3, text_of(1024), max_tokens=1),
     gen(a, 4, text_of(1025), max_tokens=1),
     gen(a, 5, text_of(4097, b"select * from orders where id = 93921; "), max_tokens=1)],
    a, rounds=15))

# the engine's prompt limit: KV cache of 512 tokens -> 511; 512 is refused
a = Arena()
write("session", "tokens-prompt-limit", session(
    [gen(a, 1, [5 + k % 500 for k in range(511)], max_tokens=1),
     gen(a, 2, [5 + k % 500 for k in range(512)], max_tokens=1)], a, rounds=15))

a = Arena()
x = ext(a, n_stop=(1, 300), bias=((300, 100.0), (7, -100.0), (639, 5.0)), min_tokens=2,
        stop_str=(b"e", b"the", b"\xc3\xa9"), text_len=48)
write("session", "ext-stops-bias", session(
    [gen(a, 1, b"The order of the day", flags=F_IGNORE_EOS, ext_off=x[0], ext_len=x[1]),
     gen(a, 2, [2, 3, 4], temperature=1.5, seed=3, ext_off=ext(a, bias=((640, 1.0),))[0],
         ext_len=40)], a))

# text buffers of 0..3 bytes: a character is never cut in half
a = Arena()
write("session", "text-buffers-tiny", session(
    [gen(a, n + 1, "héllo wörld ✓ 🙂".encode(), max_tokens=8, flags=F_IGNORE_EOS,
         ext_off=ext(a, text_len=n, stop_str=(b"\xf0\x9f",) if n == 3 else ())[0],
         ext_len=32 + (3 if n == 3 else 0)) for n in range(4)], a))

a = Arena()
write("session", "auto-classify", session(
    [gen(a, 1, b"SELECT name FROM customers WHERE city = 'Oslo'", skill=b"auto",
         ext_off=ext(a, skill=True)[0], ext_len=32),
     gen(a, 2, b"make it json: name=Bede {", skill=b"auto", flags=F_SERVED,
         ext_off=ext(a, served=True, text_len=32)[0], ext_len=32),
     gen(a, 3, [5, 90, 17, 6], skill=b"auto"),
     gen(a, 4, b"zzz nothing matches", skill=b"auto"),
     gen(a, 5, b"plain words", skill=b"auto")], a, rounds=10))

# a cancel that arrives one round later finds its target running
a = Arena()
write("session", "cancel-running", session(
    [gen(a, 1, list(range(10, 60)), max_tokens=8), gen(a, 2, b"keep going", max_tokens=8),
     sqe(user_data=9, tag=1, opcode=CANCEL, kind=0, max_tokens=0, prompt_len=0, out_off=0,
         out_len=0, top_p=0.0, rep=0.0),
     sqe(user_data=10, tag=2, opcode=CANCEL, kind=0, max_tokens=0, prompt_len=0, out_off=0,
         out_len=0, top_p=0.0, rep=0.0)], a, ctl=REAP | TRICKLE, rounds=8))

a = Arena()
write("session", "skills-routes", session(
    [gen(a, 1, b"parked while its adapter loads", skill=b"slow"),
     gen(a, 2, [4, 5, 6], skill=b"ab", routing_key=1),
     gen(a, 3, [4, 5, 6], skill=b"ab", routing_key=0xdeadbeef),
     gen(a, 4, [4, 5, 6], skill=b"base"),
     gen(a, 5, [4, 5, 6], skill=b"nosuch"),
     gen(a, 6, [4, 5, 6], skill=b"sql@v1")], a, rounds=10))

# a deadline long past, then the drain deadline: the rest is cancelled with -ESHUTDOWN
a = Arena()
write("session", "deadline-shutdown", session(
    [gen(a, 1, [7, 8, 9], deadline=1), gen(a, 2, list(range(100, 400)), max_tokens=8),
     gen(a, 3, b"drained", max_tokens=8, ext_off=ext(a, times=True)[0], ext_len=32)],
    a, ctl=REAP | DRAIN | SHUTDOWN, rounds=3))

# the client does not reap: finals wait for CQ room
a = Arena()
write("session", "cq-full", session(
    [gen(a, i + 1, [i + 3] * 4, max_tokens=2) for i in range(8)], a, ctl=0, rounds=8, cq0=6,
    cq_head=0))

# four long prompts in a 512-token KV cache: preemption and recomputation
a = Arena()
write("session", "preempt", session(
    [gen(a, i + 1, [(17 * k + i) % 600 + 3 for k in range(150)], max_tokens=8,
         flags=F_IGNORE_EOS) for i in range(4)], a, rounds=15))

# an empty text prompt is the BOS alone; without special tokens it is nothing
a = Arena()
write("session", "text-empty", session(
    [gen(a, 1, b"", kind=TEXT, max_tokens=2), gen(a, 2, b"", kind=TEXT, flags=F_NO_SPECIAL),
     gen(a, 3, b"\xff\xfe not UTF-8"), gen(a, 4, b"<s></s><s>", flags=F_NO_SPECIAL)], a))

a = Arena()
write("session", "invalid-mix", session(
    [gen(a, 1, [639, 640, 2**31]), gen(a, 2, [1, 2], temperature=math.nan),
     gen(a, 3, [1, 2], max_tokens=9), gen(a, 4, [1, 2], ext_off=ext(a, text_len=8)[0], ext_len=31),
     gen(a, 5, b"x" * 8193), gen(a, 6, [3], skill=b"auto", flags=F_SERVED),
     gen(a, 7, [3], out_tokens=1, max_tokens=2), gen(a, 8, [3], top_k=5000, min_p=1.0)], a))

# the client goes away with requests everywhere: running, queued, parked, on the helper threads
a = Arena()
write("session", "client-gone", session(
    [gen(a, 1, [(7 * k) % 600 + 3 for k in range(200)], max_tokens=8),
     gen(a, 2, [(11 * k) % 600 + 3 for k in range(200)], max_tokens=8),
     gen(a, 3, [(13 * k) % 600 + 3 for k in range(200)], max_tokens=8),
     gen(a, 4, b"still waiting for the others", max_tokens=8,
         ext_off=ext(a, text_len=64, stop_str=(b"zz",))[0], ext_len=35),
     gen(a, 5, b"parked while its adapter loads", skill=b"slow"),
     gen(a, 6, b"SELECT * FROM orders", skill=b"auto"),
     gen(a, 7, text_of(4100, b" customers"), max_tokens=1)], a, ctl=REAP | GONE, rounds=2))

# a reloaded config's prompt limit of 100 tokens under the model's 511
a = Arena()
write("session", "prompt-limit-config", session(
    [gen(a, 1, list(range(3, 103)), max_tokens=2), gen(a, 2, list(range(3, 104)), max_tokens=2),
     gen(a, 3, text_of(600), max_tokens=2)], a, rounds=6, limit=2))

# constrained decoding (ABI 1.4): a grammar record after the served record,
# its text in the arena; a schema, a regex, plain JSON, and a refused pattern
F_GRAMMAR = 16


def gen_grammar(a, tag, prompt, kind, text, max_tokens=8, **kw):
    t_off = a.put(text, 1) if text else 0
    data = prompt if isinstance(prompt, bytes) else struct.pack("<%dI" % len(prompt), *prompt)
    p_off = a.put(data, 4)
    o_len = 4 * max_tokens
    o_off = a.alloc(o_len + 8 + 96 + 16, 8)
    r_off = (o_off + o_len + 7) // 8 * 8 + 96
    a.buf[r_off:r_off + 16] = struct.pack("<4I", kind, t_off, len(text), 0)
    return sqe(user_data=tag, tag=tag, kind=TEXT if isinstance(prompt, bytes) else 0,
               max_tokens=max_tokens, prompt_off=p_off, prompt_len=len(data), out_off=o_off,
               out_len=o_len, flags=F_SERVED | F_GRAMMAR, **kw)


a = Arena()
write("session", "grammar", session(
    [gen_grammar(a, 1, b"age=3 name=Bo", 2,
                 b'{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}',
                 temperature=1.0, seed=5),
     gen_grammar(a, 2, [2, 3, 4], 3, b"(yes|no)[.!]", max_tokens=4),
     gen_grammar(a, 3, b"x", 1, b"", max_tokens=6),
     gen_grammar(a, 4, b"x", 3, b"(a|b)*a(a|b){20}", max_tokens=2)], a, rounds=15))


# LORAD_FEAT_SEQ (ctl bit 5): entries published by their seq bytes, the SQ
# tail ignored, completions published by the seq in their flags' top byte.
def with_seq(e, idx):
    """@e carrying the seq byte of index @idx (a wrong one, where @idx is not its own)."""
    return e[:SEQ_OFF] + bytes([ring_seq(idx)]) + e[SEQ_OFF + 1:]


# across 2^32, which is also a seven-bit lap wrap, with a tail an index
# session would end with -EPROTO for
a = Arena()
write("session", "seq-wrap", session(
    [gen(a, i + 1, [i + 3] * (i + 2), max_tokens=1 + i % 8) for i in range(8)], a,
    ctl=REAP | SEQ, rounds=6, sq0=0xfffffffc, cq0=0xfffffffa, sq_tail=0x12345678))

# the seven-bit lap wrap alone: lap 127 to lap 128 (seq 0xff to 0x80)
a = Arena()
write("session", "seq-lap-wrap", session(
    [gen(a, i + 1, list(range(5, 9 + i)), max_tokens=3, flags=F_SERVED,
         ext_off=ext(a, served=True)[0], ext_len=32) for i in range(6)], a,
    ctl=REAP | SEQ, rounds=5, sq0=1021, cq0=1019, sq_tail=0))

# the third entry carries its lap before's seq, the rest their own: two are
# taken, then nothing, whatever the tail says
a = Arena()
e = [gen(a, i + 1, [7, 8, 9], max_tokens=2) for i in range(6)]
e[2] = with_seq(e[2], 40 + 2 - 8)
write("session", "seq-gap", session(e, a, ctl=REAP | SEQ, rounds=4, sq0=40, cq0=40, sq_tail=46))

# the lap after's seq, and a seq without its top bit: nothing taken
a = Arena()
e = [gen(a, i + 1, [7, 8, 9], max_tokens=2) for i in range(3)]
write("session", "seq-wrong-lap", session(
    [with_seq(e[0], 300 + 8), e[1], e[2]], a, ctl=REAP | SEQ, rounds=3, sq0=300, cq0=0))
a = Arena()
e = [gen(a, 1, [7, 8, 9], max_tokens=2)]
write("session", "seq-no-top-bit", session(
    [e[0][:SEQ_OFF] + bytes([ring_seq(77) & 0x7f]) + e[0][SEQ_OFF + 1:]], a,
    ctl=REAP | SEQ, rounds=3, sq0=77, cq0=5))

# the seq bytes revealed one per round: a cancel finds its target running
a = Arena()
write("session", "seq-cancel-running", session(
    [gen(a, 1, list(range(10, 60)), max_tokens=8), gen(a, 2, b"keep going", max_tokens=8),
     sqe(user_data=9, tag=1, opcode=CANCEL, kind=0, max_tokens=0, prompt_len=0, out_off=0,
         out_len=0, top_p=0.0, rep=0.0),
     sqe(user_data=10, tag=2, opcode=CANCEL, kind=0, max_tokens=0, prompt_len=0, out_off=0,
         out_len=0, top_p=0.0, rep=0.0)], a, ctl=REAP | TRICKLE | SEQ, rounds=8,
    sq0=0xfffffffe, cq0=0xffffffff, sq_tail=0))

# no reaping: finals wait for CQ room, and each flush publishes what it moved
a = Arena()
write("session", "seq-cq-full", session(
    [gen(a, i + 1, [i + 3] * 4, max_tokens=2) for i in range(8)], a, ctl=SEQ, rounds=8,
    sq0=1020, cq0=6, cq_head=0))

# the drain deadline: the cancels' completions go out unpublished, the next flush seals them
a = Arena()
write("session", "seq-deadline-shutdown", session(
    [gen(a, 1, [7, 8, 9], deadline=1), gen(a, 2, list(range(100, 400)), max_tokens=8),
     gen(a, 3, b"drained", max_tokens=8, ext_off=ext(a, times=True)[0], ext_len=32)],
    a, ctl=REAP | DRAIN | SHUTDOWN | SEQ, rounds=3, sq0=0x7ffffffe, cq0=0x3ff))
