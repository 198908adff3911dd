# SPDX-License-Identifier: MIT
"""Python exceptions for liblorad's negative errno values.

Every function of liblorad returns a negative errno on failure, and a failed
request's final event carries one in ``res`` together with the field the
daemon refused. :func:`error` turns such a pair into the most specific
exception below; all of them derive from :class:`LoradError`.
"""
import errno as _errno

from ._ffi import FIELD_NONE, FIELD_PROMPT, FIELD_SKILL, lib


class LoradError(Exception):
    """A liblorad failure.

    ``errno`` is the positive errno (as in :class:`OSError`), ``code`` the
    negative value liblorad returned, ``field`` the name of the request field
    the daemon refused (``None`` when it named none), ``why`` the daemon's
    own sentence for a refusal, naming the limit and its value where one was
    passed (``None`` when it gave none). A request that failed
    after it started (a deadline, a daemon gone) carries what it produced
    until then as ``partial``, a :class:`~lorad.Completion`; else None.
    """

    def __init__(self, code, field=None, context=None, why=None):
        self.code = code
        self.errno = -code
        self.field = field
        self.why = why
        self.partial = None
        self.strerror = lib.lorad_strerror(code).decode("utf-8", "replace")
        msg = self.strerror
        if field:
            msg += f" (field: {field})"
        if why:
            msg += f": {why}"
        if context:
            msg = f"{context}: {msg}"
        super().__init__(msg)


class ConnectionRefused(LoradError):
    """No daemon listens on the socket (-ENOENT, -ECONNREFUSED at connect)."""


class PermissionDenied(LoradError):
    """The daemon does not accept this peer (-EACCES)."""


class DaemonGone(LoradError):
    """The session ended: the daemon died, stopped or closed it (-ECONNRESET, -EPIPE,
    -EPROTO, -ESHUTDOWN). There is no silent reconnect: make a new Client."""


class Busy(LoradError):
    """Full for now: ring, arena or request table (-EAGAIN), too many requests in
    flight or the daemon's memory for grammars (-EBUSY; field "grammar") or too
    many clients (-EUSERS). Retry later."""


TryAgain = Busy


class InvalidRequest(LoradError):
    """The daemon or the library refused the request (-EINVAL; -EILSEQ for a text
    prompt that is not UTF-8); ``field`` says which part."""


class SkillNotFound(LoradError):
    """The daemon knows no such skill (-ENOENT on the skill field), or the version
    named is being removed (-EIDRM on the skill field)."""


class TooBig(LoradError):
    """The request can never fit: max_tokens over the daemon's limit, a prompt too long,
    or more than the arena holds (-E2BIG)."""


class Timeout(LoradError):
    """Nothing came in time (-ETIMEDOUT); a request that timed out is cancelled."""


class ProtocolMismatch(LoradError):
    """The daemon does not speak this ABI version (-EPROTONOSUPPORT)."""


class ForkedConnection(LoradError):
    """The connection was inherited across fork(); connect again in the child (-ECHILD)."""


_BY_ERRNO = {
    _errno.ECONNREFUSED: ConnectionRefused,
    _errno.EACCES: PermissionDenied,
    _errno.ECONNRESET: DaemonGone,
    _errno.EPIPE: DaemonGone,
    _errno.EPROTO: DaemonGone,
    _errno.ESHUTDOWN: DaemonGone,
    _errno.EAGAIN: Busy,
    _errno.EBUSY: Busy,
    _errno.EUSERS: Busy,
    _errno.EINVAL: InvalidRequest,
    _errno.E2BIG: TooBig,
    _errno.ETIMEDOUT: Timeout,
    _errno.EPROTONOSUPPORT: ProtocolMismatch,
    _errno.ECHILD: ForkedConnection,
}


def field_name(field):
    """The name of an enum lorad_field ("skill", "max_tokens", ...), or None for none."""
    if field == FIELD_NONE:
        return None
    return lib.lorad_field_name(field).decode()


def error(code, field=FIELD_NONE, context=None, connecting=False, why=None):
    """The exception for liblorad's return value or event ``res`` *code* (< 0),
    with the daemon's words *why* for a refused request."""
    cls = _BY_ERRNO.get(-code, LoradError)
    if -code == _errno.EIDRM and field == FIELD_SKILL:
        cls = SkillNotFound
    if -code == _errno.EILSEQ and field == FIELD_PROMPT:
        cls = InvalidRequest
    if -code == _errno.ENOENT:
        if field == FIELD_SKILL:
            cls = SkillNotFound
        elif connecting:
            cls = ConnectionRefused
    return cls(code, field_name(field), context, why)


def check(code, context=None):
    """Raise the exception for *code* when it is negative; return it otherwise."""
    if code < 0:
        raise error(code, context=context)
    return code
