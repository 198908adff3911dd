# SPDX-License-Identifier: MIT
"""One request's C memory and how its events read, shared by the sync and asyncio clients.

liblorad writes a request's token ids and text into buffers the caller owns
until its final event, so a :class:`Request` keeps every ctypes object the
struct points to alive for that long.
"""
import array
import ctypes
import errno
import json
import time
from dataclasses import dataclass, field
from typing import List, Optional

from . import _check, _ffi
from ._ffi import lib
from .errors import error


@dataclass
class Completion:
    """What a finished request produced and who served it."""
    text: Optional[str]      #: the generated text (None for a token-only request)
    tokens: List[int]        #: the generated token ids
    finish: str              #: "length", "stop", "cancelled", "deadline"
    skill: str               #: the skill that served it ("auto": the one chosen), or "base"
    version: int             #: the adapter version number that served it (0: the base)
    version_id: str          #: "name@version", or "base"
    queue_us: int = 0        #: submit seen -> first step
    ttft_us: int = 0         #: submit seen -> first token
    itl_us: int = 0          #: mean time between tokens
    times: dict = field(default_factory=dict)  #: CLOCK_MONOTONIC ns: seen, admitted, first_token, final
    rows: Optional[list] = None  #: with result=: one array('f') per token (logits or hidden state)
    prompt_tokens: Optional[int] = None  #: the prompt's tokens as the daemon counted them
                                         #: (None with a liblorad older than 2.2)


def routing_key(key):
    """lorad_routing_key(): the 64-bit key of a str (UTF-8) or bytes, as the C library computes it."""
    data = key.encode() if isinstance(key, str) else bytes(key)
    return lib.lorad_routing_key(data, len(data))


_RESULT_KINDS = {None: _ffi.RESULT_NONE, "logits": _ffi.RESULT_LOGITS,
                 "hidden": _ffi.RESULT_HIDDEN}


class Request:
    """The struct lorad_request of one submission and the buffers it points to."""

    def _grammar(self, r, fmt):
        """response_format: "json" (any JSON value), {"json_schema": schema (a
        dict or JSON text)} or {"regex": pattern}: the output must follow it."""
        if fmt == "json":
            kind, text = _ffi.GRAMMAR_JSON, b""
        elif isinstance(fmt, dict) and len(fmt) == 1 and "json_schema" in fmt:
            sch = fmt["json_schema"]
            kind, text = _ffi.GRAMMAR_SCHEMA, (sch if isinstance(sch, str) else json.dumps(sch))
        elif isinstance(fmt, dict) and len(fmt) == 1 and "regex" in fmt:
            kind, text = _ffi.GRAMMAR_REGEX, fmt["regex"]
        else:
            raise ValueError('response_format must be "json", {"json_schema": ...} or {"regex": ...}')
        text = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        self._gtext = ctypes.create_string_buffer(text, len(text) or 1)
        r.flags |= _ffi.SQE_F_GRAMMAR
        r.grammar = kind
        r.grammar_text = ctypes.addressof(self._gtext) if text else None
        r.grammar_len = len(text)

    def __init__(self, user_data, skill, prompt, max_tokens, *, temperature=0.0, top_p=0.0,
                 top_k=0, min_p=0.0, seed=0, routing_key=None, stop=None, stop_ids=None,
                 ignore_eos=False, text=None, text_cap=None, min_tokens=0,
                 repetition_penalty=0.0, presence_penalty=0.0, logit_bias=None, priority=0,
                 deadline=None, result=None, response_format=None,
                 arena_size=_check.DEFAULT_ARENA):
        if isinstance(prompt, str):
            prompt = prompt.encode("utf-8")
        is_text = isinstance(prompt, (bytes, bytearray))
        self.text = is_text if text is None else bool(text)
        max_tokens = _check.uint("max_tokens", max_tokens, _check.U32, 1)
        if max_tokens * 4 > arena_size:
            # what liblorad refuses anyway, before max_tokens ids are allocated here
            raise error(-errno.E2BIG, context=f"max_tokens {max_tokens}: {max_tokens * 4} "
                        f"bytes of ids, more than the connection's arena of {arena_size}")
        r = self.c = _ffi.lorad_request()
        r.user_data = user_data
        self._skill = _check.cstr("skill", skill)
        r.skill = self._skill
        if is_text:
            self._prompt = ctypes.create_string_buffer(bytes(prompt), len(prompt))
            r.prompt_text = ctypes.addressof(self._prompt)
            r.prompt_text_len = _check.uint("the prompt's length in bytes", len(prompt), _check.U32)
        else:
            ids = _check.ids("a prompt token id", prompt)
            self._prompt = (ctypes.c_uint32 * len(ids))(*ids)
            r.prompt = self._prompt
            r.n_prompt = len(ids)
        r.max_tokens = max_tokens
        # sized to what was asked: the library refuses (-E2BIG) what can never fit
        self.out = (ctypes.c_uint32 * max_tokens)()
        r.out = self.out
        if self.text:
            cap = (min(max_tokens * 32 + 64, 16 << 20) if text_cap is None   # as lorad-cli
                   else _check.uint("text_cap", text_cap, _check.U32, 1))
            if cap > arena_size:
                raise error(-errno.E2BIG, context=f"text_cap {cap}: more than the "
                            f"connection's arena of {arena_size} bytes")
            self.out_text = ctypes.create_string_buffer(cap)
            r.out_text = ctypes.addressof(self.out_text)
            r.out_text_cap = cap
        r.temperature = temperature
        r.top_p = top_p
        r.top_k = _check.uint("top_k", top_k, _check.U32)
        r.min_p = min_p
        r.seed = _check.uint("seed", seed, _check.U64)
        r.min_tokens = _check.uint("min_tokens", min_tokens, _check.U32)
        r.repetition_penalty = repetition_penalty
        r.presence_penalty = presence_penalty
        r.priority = _check.uint("priority", priority, _check.U8)
        if deadline is not None:    # seconds from now, on the daemon's clock (CLOCK_MONOTONIC)
            r.deadline_ns = _check.uint(
                "deadline (seconds from now, as ns of CLOCK_MONOTONIC)",
                time.clock_gettime_ns(time.CLOCK_MONOTONIC) + int(deadline * 1e9), _check.U64, 1)
        if ignore_eos:
            r.flags |= _ffi.SQE_F_IGNORE_EOS
        self._why = None
        if _ffi.HAS_WHY:
            # the daemon's words when it refuses the request: what, which limit
            self._why = ctypes.create_string_buffer(_ffi.WHY_MAX)
            r.flags |= _ffi.SQE_F_WHY
            r.why = ctypes.addressof(self._why)
            r.why_cap = _ffi.WHY_MAX
        if logit_bias:
            items = [(_check.uint("a logit_bias token id", t, _check.U32), b)
                     for t, b in logit_bias.items()]
            self._bias = (_ffi.lorad_logit_bias * len(items))(*items)
            r.logit_bias = self._bias
            r.n_logit_bias = len(items)
        if result not in _RESULT_KINDS:
            raise ValueError("result must be None, 'logits' or 'hidden'")
        self.rows = None
        if result:
            self._result = _ffi.lorad_result()
            r.result = _RESULT_KINDS[result]
            r.result_at = ctypes.pointer(self._result)
        if response_format is not None:
            self._grammar(r, response_format)
        if isinstance(routing_key, int):
            r.routing_key = _check.uint("routing_key", routing_key, _check.U64)
        elif routing_key is not None:
            self._key = routing_key.encode() if isinstance(routing_key, str) else bytes(routing_key)
            self._keybuf = ctypes.create_string_buffer(self._key, len(self._key))
            r.routing_key_bytes = ctypes.addressof(self._keybuf)
            r.routing_key_len = len(self._key)
        if stop:
            enc = [_check.cstr("a stop string", s) for s in stop]
            self._stop = (ctypes.c_char_p * len(enc))(*enc)
            r.stop = self._stop
            r.n_stop = len(enc)
        if stop_ids:
            stop_ids = _check.ids("a stop_ids token id", stop_ids)
            self._stop_ids = (ctypes.c_uint32 * len(stop_ids))(*stop_ids)
            r.stop_ids = self._stop_ids
            r.n_stop_ids = len(stop_ids)
        self._times = _ffi.lorad_times()
        r.times = ctypes.pointer(self._times)
        self.events = []        # events reaped for this request, not yet read
        self.done = False       # its final event was reaped
        self._tokens_seen = 0
        self._text_seen = 0

    @property
    def user_data(self):
        return self.c.user_data

    def feed(self, ev):
        """What an event brings: its new piece, and the Completion when it is final (else None)."""
        piece = self.piece(ev)
        return piece, (self.completion(ev) if ev.flags & _ffi.EV_FINAL else None)

    def piece(self, ev):
        """What event *ev* added: text (str) for a text request, else a list of token ids."""
        if self.text:
            end = min(ev.text_len, len(self.out_text))
            new = ctypes.string_at(ctypes.addressof(self.out_text) + self._text_seen,
                                   max(end - self._text_seen, 0))
            self._text_seen = max(end, self._text_seen)
            return new.decode("utf-8", "replace")
        end = min(ev.n_tokens, len(self.out))
        new = list(self.out[self._tokens_seen:end])
        self._tokens_seen = max(end, self._tokens_seen)
        return new

    def take_rows(self, handle, ev):
        """On the final event: copy the result rows out of the arena and give their
        space back (lorad_result_release). Rows in device memory are not read."""
        if not self.c.result:
            return
        res = self._result
        if res.host and ev.res >= 0:
            width = res.row_floats * ctypes.sizeof(ctypes.c_float)
            base = ctypes.cast(res.host, ctypes.c_void_p).value
            self.rows = []
            for i in range(min(ev.n_tokens, res.rows)):
                row = array.array("f")
                row.frombytes(ctypes.string_at(base + i * width, width))
                self.rows.append(row)
        lib.lorad_result_release(handle, ctypes.byref(res))

    def completion(self, ev):
        """The Completion of final event *ev*; raises the request's error when it failed,
        with what it produced until then as the exception's ``partial``."""
        if ev.res < 0:
            why = self._why.value.decode("utf-8", "replace") if self._why is not None else ""
            exc = error(ev.res, ev.field, why=why or None)
            exc.partial = self._completion(ev)
            raise exc
        return self._completion(ev)

    def _completion(self, ev):
        text = None
        if self.text:
            text = ctypes.string_at(ctypes.addressof(self.out_text),
                                    min(ev.text_len, len(self.out_text))).decode("utf-8", "replace")
        t = self._times
        return Completion(
            text=text,
            tokens=list(self.out[:min(ev.n_tokens, len(self.out))]),
            finish=lib.lorad_finish_name(ev.finish).decode(),
            skill=ev.skill.decode("utf-8", "replace"),
            version=ev.version,
            version_id=ev.version_id.decode("utf-8", "replace"),
            rows=self.rows,
            prompt_tokens=ev.n_prompt if ev.flags & _ffi.EV_PROMPT else None,
            queue_us=ev.queue_us, ttft_us=ev.ttft_us, itl_us=ev.itl_us,
            times={"seen_ns": t.seen_ns, "admitted_ns": t.admitted_ns,
                   "first_token_ns": t.first_token_ns, "final_ns": t.final_ns})


def take_events(c, events, n, reqs, deliver):
    """Hand each of the first n events to its request in reqs (by user_data).

    A final event ends its request: it leaves reqs and its result rows are
    taken; deliver(req, ev) keeps every event for the waiting side.
    """
    for i in range(n):
        ev = _ffi.lorad_event.from_buffer_copy(events[i])
        req = reqs.get(ev.user_data)
        if req is None:
            continue
        if ev.flags & _ffi.EV_FINAL:
            req.done = True
            del reqs[ev.user_data]
            req.take_rows(c, ev)
        deliver(req, ev)
