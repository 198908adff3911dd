# SPDX-License-Identifier: MIT
"""Python values into liblorad's C fields, each checked once, here.

ctypes stores an int into a C integer field modulo its width and a str
into a ``char *`` up to its first NUL, without a word: a token id of
2**32 + 77 would become 77, a priority of 300 become 44, a stop string
"a\\0b" become "a". Every value bound for such a field comes through
these helpers, which raise one clear error naming the argument and its
range instead.
"""
import operator

from . import _ffi

U8 = (1 << 8) - 1
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
I32 = (1 << 31) - 1

DEFAULT_ARENA = 4 << 20     # lorad_connect_opts.arena_size 0: 4 MiB (lorad.h)


def uint(name, value, top, low=0):
    """*value* as an int in low..top (the range of *name*'s C field)."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"lorad: {name} must be an integer, not {type(value).__name__}") from None
    if not low <= v <= top:
        raise ValueError(f"lorad: {name} must be in {low}..{top}, not {v}")
    return v


def ids(name, values):
    """A sequence of token ids, each a uint32, as a list of ints."""
    return [uint(name, v, U32) for v in values]


def cstr(name, value):
    """*value* (str, bytes or None) as bytes for a NUL-terminated C string."""
    if value is None:
        return None
    b = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if b"\0" in b:
        raise ValueError(f"lorad: {name} must not contain a NUL byte")
    return b


def connect_opts(opts):
    """struct lorad_connect_opts from keywords, and the arena's size in bytes."""
    known = {name for name, _ in _ffi.lorad_connect_opts._fields_}
    vals = {}
    for name, v in opts.items():
        if name not in known:
            raise TypeError(f"lorad: unknown connect option {name!r}")
        vals[name] = uint(name, v, I32, -I32 - 1) if name == "timeout_ms" else uint(name, v, U32)
    return _ffi.lorad_connect_opts(**vals), vals.get("arena_size") or DEFAULT_ARENA
