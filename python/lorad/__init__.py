# SPDX-License-Identifier: MIT
"""lorad: a Python client of the lorad daemon, over the installed liblorad.so.2 (ctypes).

    import lorad
    with lorad.Client("/run/lorad/lorad.sock") as c:
        r = c.complete("json", "age=36 product=camera", max_tokens=40)
        print(r.text, r.finish, r.version_id)
        for piece in c.stream(None, "Once upon a time", max_tokens=30):
            print(piece, end="", flush=True)

:mod:`lorad.aio` has the same for asyncio. Set ``LORAD_LIBRARY`` to the path
of liblorad.so.2 to use one that the dynamic loader does not find.
"""
from ._request import Completion, routing_key
from .client import Client, Stream
from .errors import (Busy, ConnectionRefused, DaemonGone, ForkedConnection, InvalidRequest,
                     LoradError, PermissionDenied, ProtocolMismatch, SkillNotFound, Timeout,
                     TooBig, TryAgain)

__all__ = [
    "Client", "Stream", "Completion", "routing_key",
    "LoradError", "ConnectionRefused", "PermissionDenied", "DaemonGone", "Busy", "TryAgain",
    "InvalidRequest", "SkillNotFound", "TooBig", "Timeout", "ProtocolMismatch",
    "ForkedConnection",
]
