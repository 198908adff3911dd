# SPDX-License-Identifier: MIT
"""The blocking client: one connection to lorad, usable from many threads."""
import ctypes
import errno
import itertools
import threading
import time

from . import _check, _ffi
from ._ffi import lib
from ._request import Completion, Request, take_events
from .errors import Timeout, check, error

_REAP_MAX = 64       # events one lorad_wait() may return
_REAP_SLICE_MS = 100  # a reaping thread looks up this often (timeouts, close)


class Stream:
    """Iterator over the pieces of one request as they arrive.

    Yields str pieces for a text request, lists of new token ids for a
    token-only one. After the last piece :attr:`result` holds the
    :class:`~lorad.Completion`. Closing it (``with``, ``close()``, or leaving
    the loop early and dropping it) cancels a request still running.
    """

    def __init__(self, client, req, timeout):
        self._client = client
        self._req = req
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self.result = None

    def __iter__(self):
        return self

    def __next__(self):
        while self.result is None:
            ev = self._client._next_event(self._req, self._deadline)
            piece, self.result = self._req.feed(ev)
            if piece:
                return piece
        raise StopIteration

    def close(self):
        """Cancel the request if it has not finished."""
        if self.result is None and not self._req.done:
            self._client._cancel(self._req)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Client:
    """A connection to the lorad daemon listening on *socket_path*.

    One Client may be shared by many threads: whichever thread waits reaps
    the connection's events and hands each to the request it belongs to.

    Keyword arguments go to struct lorad_connect_opts: ``sq_entries``,
    ``cq_entries``, ``arena_size``, ``max_inflight``, ``timeout_ms`` (of the
    connect and handshake), ``spin_us``.
    """

    def __init__(self, socket_path, **opts):
        o, self._arena = _check.connect_opts(opts)
        handle = ctypes.c_void_p()
        rc = lib.lorad_connect(str(socket_path).encode(), ctypes.byref(o), ctypes.byref(handle))
        if rc < 0:
            raise error(rc, context=str(socket_path), connecting=True)
        self._c = handle
        self._cond = threading.Condition()
        self._reqs = {}              # user_data -> Request, until its final event
        self._ids = itertools.count(1)
        self._reaping = False        # a thread is inside lorad_wait()
        self._error = 0              # the session's error, once gone
        self._closed = False
        self._events = (_ffi.lorad_event * _REAP_MAX)()

    # --- the public API -------------------------------------------------------

    def complete(self, skill, prompt, max_tokens=64, temperature=0.0, routing_key=None,
                 timeout=None, **kw):
        """Run one request to its end and return its :class:`~lorad.Completion`.

        *skill*: a skill name, "auto", or None/"base" for the base model.
        *prompt*: text (str or bytes; the daemon tokenizes it) or a list of
        token ids. *routing_key*: an int key, or a str/bytes hashed with
        lorad_routing_key() (a user name: the same user, the same version).
        More keywords: ``top_p``, ``top_k``, ``min_p``, ``seed``,
        ``repetition_penalty``, ``presence_penalty``, ``stop`` (strings),
        ``stop_ids``, ``min_tokens``, ``logit_bias`` ({token: bias}),
        ``ignore_eos``, ``priority``, ``deadline`` (seconds from now: the
        daemon ends it with finish "deadline"), ``text`` (ask for text out of
        a token prompt), ``result`` ("logits" or "hidden": the Completion's
        ``rows`` hold one row of floats per token, read from the shared
        arena), ``response_format`` ("json", {"json_schema": schema} or
        {"regex": pattern}: the output must follow it). *timeout* in seconds; on expiry the request is cancelled and
        :class:`~lorad.Timeout` raised.
        """
        s = self.stream(skill, prompt, max_tokens, temperature, routing_key, timeout, **kw)
        with s:
            for _ in s:
                pass
        return s.result

    def stream(self, skill, prompt, max_tokens=64, temperature=0.0, routing_key=None,
               timeout=None, **kw):
        """Submit a request and return a :class:`Stream` of its pieces (see complete())."""
        req = Request(next(self._ids), skill, prompt, max_tokens, temperature=temperature,
                      routing_key=routing_key, arena_size=self._arena, **kw)
        self._submit(req)
        return Stream(self, req, timeout)

    def results_info(self):
        """Where this connection's result rows go (lorad_results_info()), as a dict."""
        info = _ffi.lorad_results_info()
        check(lib.lorad_results_info(self._handle(), ctypes.byref(info)))
        return {name: getattr(info, name) for name, _ in info._fields_}

    def pending(self):
        """Requests submitted and not yet finally reaped (lorad_pending())."""
        return lib.lorad_pending(self._handle())

    def close(self):
        """Close the connection; requests still running are abandoned."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._reaping:
                self._cond.wait()
            self._cond.notify_all()
        lib.lorad_close(self._c)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_c", None) is not None and not self._closed:
            self.close()

    # --- inside ------------------------------------------------------------------

    def _handle(self):
        if self._closed:
            raise ValueError("lorad.Client is closed")
        return self._c

    def _submit(self, req):
        with self._cond:
            handle = self._handle()
            if self._error:
                raise error(self._error)
            self._reqs[req.user_data] = req   # before submit: another thread may reap its events
        rc = lib.lorad_submit(handle, ctypes.byref(req.c))
        if rc < 0:
            with self._cond:
                self._reqs.pop(req.user_data, None)
            raise error(rc, context="submit")

    def _cancel(self, req):
        with self._cond:
            if req.done or self._closed or self._error:
                return
        lib.lorad_cancel(self._c, req.user_data)   # -ENOENT: it finished meanwhile

    def _next_event(self, req, deadline):
        """The next event of *req*, reaping for every thread while none is there."""
        while True:
            with self._cond:
                while True:
                    if req.events:
                        return req.events.pop(0)
                    if self._closed:
                        raise ValueError("lorad.Client is closed")
                    if self._error:
                        raise error(self._error)
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    if not self._reaping:
                        self._reaping = True
                        break
                    self._cond.wait(left)
            if left is not None and left <= 0:
                self._cancel(req)
                raise Timeout(-errno.ETIMEDOUT, context="request")
            self._reap(left)

    def _reap(self, left):
        """One lorad_wait() by the reaping thread; hands the events out."""
        ms = _REAP_SLICE_MS if left is None else max(1, min(_REAP_SLICE_MS, int(left * 1000)))
        n = 0
        try:
            n = lib.lorad_wait(self._c, self._events, _REAP_MAX, ms)   # the GIL is released
        finally:
            with self._cond:
                self._reaping = False
                take_events(self._c, self._events, max(n, 0), self._reqs,
                            lambda req, ev: req.events.append(ev))
                if n < 0 and n != -errno.ETIMEDOUT:
                    self._error = n
                self._cond.notify_all()


__all__ = ["Client", "Stream", "Completion"]
