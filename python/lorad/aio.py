# SPDX-License-Identifier: MIT
"""The asyncio client: requests as coroutines and async iterators, driven by the
connection's doorbell file descriptor (lorad_fd() and lorad_arm() with
loop.add_reader), so the event loop never blocks.

    async with lorad.aio.Client(path) as c:
        r = await c.complete("json", "age=36 name=Mino", max_tokens=40)
        async for piece in c.stream(None, "Hello", max_tokens=20):
            print(piece, end="")

A Client belongs to the event loop it was made on; use it only from there.
"""
import asyncio
import ctypes
import errno
import itertools

from . import _check, _ffi
from ._ffi import lib
from ._request import Completion, Request, take_events
from .errors import Timeout, error

_REAP_MAX = 64


class Stream:
    """Async iterator over one request's pieces (str for text, lists of ids for tokens);
    :attr:`result` holds the Completion after the last one. ``aclose()`` or
    ``async with`` cancels a request still running."""

    def __init__(self, client, req):
        self._client = client
        self._req = req
        self.result = None

    def __aiter__(self):
        return self

    async def __anext__(self):
        while self.result is None:
            ev = await self._req.queue.get()
            if isinstance(ev, BaseException):
                raise ev
            piece, self.result = self._req.feed(ev)
            if piece:
                return piece
        raise StopAsyncIteration

    async def aclose(self):
        """Cancel the request if it has not finished."""
        if self.result is None and not self._req.done:
            self._client._cancel(self._req)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()


class Client:
    """A connection to lorad for asyncio; keywords as for :class:`lorad.Client`.

    Connecting is one quick handshake on a local socket; it runs in the
    constructor. Call it from inside the running loop.
    """

    def __init__(self, socket_path, **opts):
        self._loop = asyncio.get_running_loop()
        o, self._arena = _check.connect_opts(opts)
        handle = ctypes.c_void_p()
        rc = lib.lorad_connect(str(socket_path).encode(), ctypes.byref(o), ctypes.byref(handle))
        if rc < 0:
            raise error(rc, context=str(socket_path), connecting=True)
        self._c = handle
        self._fd = lib.lorad_fd(handle)
        self._reqs = {}
        self._ids = itertools.count(1)
        self._events = (_ffi.lorad_event * _REAP_MAX)()
        self._error = 0
        self._closed = False
        self._reading = False     # the fd is registered with the loop
        self._scheduled = False   # a reap is queued with call_soon

    async def complete(self, skill, prompt, max_tokens=64, temperature=0.0, routing_key=None,
                       timeout=None, **kw):
        """Run one request to its end; as :meth:`lorad.Client.complete`."""
        s = self.stream(skill, prompt, max_tokens, temperature, routing_key, **kw)
        try:
            async with s:
                await asyncio.wait_for(self._drain(s), timeout)
        except asyncio.TimeoutError:
            raise Timeout(-errno.ETIMEDOUT, context="request") from None
        return s.result

    @staticmethod
    async def _drain(s):
        async for _ in s:
            pass

    def stream(self, skill, prompt, max_tokens=64, temperature=0.0, routing_key=None, **kw):
        """Submit a request; returns a :class:`Stream` to ``async for`` over."""
        if self._closed:
            raise ValueError("lorad.aio.Client is closed")
        if self._error:
            raise error(self._error)
        req = Request(next(self._ids), skill, prompt, max_tokens, temperature=temperature,
                      routing_key=routing_key, arena_size=self._arena, **kw)
        req.queue = asyncio.Queue()
        self._reqs[req.user_data] = req
        rc = lib.lorad_submit(self._c, ctypes.byref(req.c))
        if rc < 0:
            del self._reqs[req.user_data]
            raise error(rc, context="submit")
        self._schedule()
        return Stream(self, req)

    def close(self):
        """Close the connection; requests still running fail with DaemonGone-like errors."""
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        self._fail_all(error(-errno.ECONNRESET, context="client closed"))
        lib.lorad_close(self._c)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()

    # --- inside ---------------------------------------------------------------------

    def _cancel(self, req):
        if not (req.done or self._closed or self._error):
            lib.lorad_cancel(self._c, req.user_data)

    def _schedule(self):
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._on_ready)

    def _stop_reading(self):
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _fail_all(self, exc):
        for req in self._reqs.values():
            req.done = True
            req.queue.put_nowait(exc)
        self._reqs.clear()

    def _on_ready(self):
        """The doorbell rang (or a submit happened): reap everything, then arm or sleep."""
        self._scheduled = False
        if self._closed:
            return
        while True:
            n = lib.lorad_wait(self._c, self._events, _REAP_MAX, 0)
            if n <= 0:
                break
            take_events(self._c, self._events, n, self._reqs,
                        lambda req, ev: req.queue.put_nowait(ev))
        if n < 0 and n != -errno.ETIMEDOUT:
            return self._gone(n)
        if not self._reqs:
            self._stop_reading()      # nothing to wait for: no wakeups wanted
            return
        armed = lib.lorad_arm(self._c)
        if armed < 0:
            return self._gone(armed)
        if armed == 1:                # events came meanwhile: reap again, do not sleep
            self._schedule()
        elif not self._reading:
            self._loop.add_reader(self._fd, self._on_ready)
            self._reading = True

    def _gone(self, code):
        self._error = code
        self._stop_reading()
        self._fail_all(error(code))


__all__ = ["Client", "Stream", "Completion"]
