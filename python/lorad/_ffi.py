# SPDX-License-Identifier: MIT
"""ctypes declarations of liblorad (include/lorad/lorad.h, ABI 1.3, soname liblorad.so.2).

Every structure here mirrors its C definition field by field, in order; the
test tests/test_layout.py compares their sizes and offsets with what the C
compiler says, so an edit of the header that is not carried here fails it.
"""
import ctypes
import ctypes.util
import os
from ctypes import (POINTER, Structure, c_char, c_char_p, c_float, c_int, c_size_t,
                    c_uint, c_uint8, c_uint32, c_uint64, c_void_p)

SKILL_MAX = 32       # LORAD_SKILL_MAX
VERSION_MAX = 64     # LORAD_VERSION_MAX
MAX_STOP = 64        # LORAD_MAX_STOP
MAX_BIAS = 1024      # LORAD_MAX_BIAS
MAX_STOP_STR = 16    # LORAD_MAX_STOP_STR

EV_FINAL = 1 << 0            # LORAD_EV_FINAL
EV_PROMPT = 1 << 1           # LORAD_EV_PROMPT: n_prompt is set
SQE_F_IGNORE_EOS = 1 << 0    # LORAD_SQE_F_IGNORE_EOS
SQE_F_NO_SPECIAL = 1 << 1    # LORAD_SQE_F_NO_SPECIAL
SQE_F_GRAMMAR = 1 << 4       # LORAD_SQE_F_GRAMMAR
SQE_F_WHY = 1 << 5           # LORAD_SQE_F_WHY
WHY_MAX = 192                # LORAD_WHY_MAX
GRAMMAR_JSON, GRAMMAR_SCHEMA, GRAMMAR_REGEX = 1, 2, 3   # enum lorad_grammar_kind

RESULT_NONE, RESULT_LOGITS, RESULT_HIDDEN = 0, 1, 2   # enum lorad_result_kind
RESULTS_ARENA, RESULTS_DEVICE = 0, 1                  # enum lorad_result_where

# enum lorad_field
(FIELD_NONE, FIELD_OPCODE, FIELD_PROMPT_KIND, FIELD_FLAGS, FIELD_RESERVED, FIELD_PROMPT,
 FIELD_OUTPUT, FIELD_EXT, FIELD_MAX_TOKENS, FIELD_SAMPLING, FIELD_SKILL, FIELD_DEADLINE,
 FIELD_TAG, FIELD_RESULT) = range(14)


class lorad_connect_opts(Structure):
    _fields_ = [
        ("sq_entries", c_uint32),
        ("cq_entries", c_uint32),
        ("arena_size", c_uint32),
        ("max_inflight", c_uint32),
        ("timeout_ms", c_int),
        ("spin_us", c_uint32),
        ("results_size", c_uint32),
    ]


class lorad_logit_bias(Structure):
    _fields_ = [("token", c_uint32), ("bias", c_float)]


class lorad_times(Structure):
    _fields_ = [
        ("seen_ns", c_uint64),
        ("admitted_ns", c_uint64),
        ("first_token_ns", c_uint64),
        ("final_ns", c_uint64),
    ]


class lorad_result(Structure):
    _fields_ = [
        ("host", POINTER(c_float)),
        ("device", c_void_p),
        ("cuda_device", c_int),
        ("row_floats", c_uint32),
        ("rows", c_uint32),
        ("id", c_uint32),
    ]


class lorad_results_info(Structure):
    _fields_ = [
        ("where", c_uint),
        ("why", c_int),
        ("vocab", c_uint32),
        ("hidden", c_uint32),
        ("device_size", c_uint64),
        ("cuda_device", c_int),
        ("open_ns", c_uint64),
    ]


class lorad_request(Structure):
    _fields_ = [
        ("user_data", c_uint64),
        ("skill", c_char_p),
        ("routing_key", c_uint64),
        ("prompt", POINTER(c_uint32)),
        ("n_prompt", c_uint32),
        ("max_tokens", c_uint32),
        ("out", POINTER(c_uint32)),
        ("temperature", c_float),
        ("top_p", c_float),
        ("min_p", c_float),
        ("repetition_penalty", c_float),
        ("presence_penalty", c_float),
        ("top_k", c_uint32),
        ("seed", c_uint64),
        ("deadline_ns", c_uint64),
        ("flags", c_uint32),
        ("priority", c_uint8),
        ("stop_ids", POINTER(c_uint32)),
        ("n_stop_ids", c_uint32),
        ("min_tokens", c_uint32),
        ("logit_bias", POINTER(lorad_logit_bias)),
        ("n_logit_bias", c_uint32),
        ("prompt_text", c_void_p),      # const char *, not NUL-terminated: prompt_text_len
        ("prompt_text_len", c_uint32),
        ("out_text", c_void_p),         # char *, the caller's buffer
        ("out_text_cap", c_uint32),
        ("stop", POINTER(c_char_p)),
        ("n_stop", c_uint32),
        ("times", POINTER(lorad_times)),
        ("routing_key_bytes", c_void_p),
        ("routing_key_len", c_uint32),
        ("result", c_uint32),
        ("result_at", POINTER(lorad_result)),
        ("grammar", c_uint32),
        ("grammar_text", c_void_p),     # const char *, not NUL-terminated: grammar_len
        ("grammar_len", c_uint32),
        ("why", c_void_p),              # char *, the caller's buffer (SQE_F_WHY, liblorad 2.3)
        ("why_cap", c_uint32),
    ]


class lorad_event(Structure):
    _fields_ = [
        ("user_data", c_uint64),
        ("res", c_int),
        ("flags", c_uint),
        ("finish", c_uint),
        ("field", c_uint),
        ("n_tokens", c_uint32),
        ("n_new", c_uint32),
        ("checksum", c_uint32),
        ("queue_us", c_uint32),
        ("ttft_us", c_uint32),
        ("itl_us", c_uint32),
        ("version", c_uint32),
        ("queue_steps", c_uint32),
        ("step", c_uint32),
        ("text_len", c_uint32),
        ("text_new", c_uint32),
        ("skill", c_char * SKILL_MAX),
        ("version_id", c_char * VERSION_MAX),
        ("n_prompt", c_uint32),   # with EV_PROMPT (liblorad 2.2, in the 2.0 tail padding)
    ]


class lorad_stats(Structure):
    _fields_ = [
        ("submitted", c_uint64),
        ("reaped", c_uint64),
        ("sq_doorbells", c_uint64),
        ("sleeps", c_uint64),
        ("daemon_cq_doorbells", c_uint64),
        ("daemon_sleeps", c_uint64),
    ]


# the structures tests/test_layout.py checks against the C compiler
MIRRORED = (lorad_connect_opts, lorad_request, lorad_event, lorad_times, lorad_logit_bias,
            lorad_result, lorad_results_info, lorad_stats)

_PROTOTYPES = {
    # name: (restype, argtypes)
    "lorad_connect": (c_int, [c_char_p, POINTER(lorad_connect_opts), POINTER(c_void_p)]),
    "lorad_close": (None, [c_void_p]),
    "lorad_submit": (c_int, [c_void_p, POINTER(lorad_request)]),
    "lorad_submit_batch": (c_int, [c_void_p, POINTER(lorad_request), c_uint]),
    "lorad_reap": (c_int, [c_void_p, POINTER(lorad_event), c_uint]),
    "lorad_wait": (c_int, [c_void_p, POINTER(lorad_event), c_uint, c_int]),
    "lorad_cancel": (c_int, [c_void_p, c_uint64]),
    "lorad_fd": (c_int, [c_void_p]),
    "lorad_arm": (c_int, [c_void_p]),
    "lorad_generate": (c_int, [c_void_p, POINTER(lorad_request), POINTER(lorad_event), c_int]),
    "lorad_results_info": (c_int, [c_void_p, POINTER(lorad_results_info)]),
    "lorad_result_wait": (c_int, [c_void_p, c_void_p]),
    "lorad_result_sync": (c_int, [c_void_p]),
    "lorad_result_release": (c_int, [c_void_p, POINTER(lorad_result)]),
    "lorad_pending": (c_uint, [c_void_p]),
    "lorad_get_stats": (c_int, [c_void_p, POINTER(lorad_stats)]),
    "lorad_routing_key": (c_uint64, [c_void_p, c_size_t]),
    "lorad_strerror": (c_char_p, [c_int]),
    "lorad_field_name": (c_char_p, [c_uint]),
    "lorad_finish_name": (c_char_p, [c_uint]),
    "lorad_library_version": (c_uint, []),
}


def _candidates():
    env = os.environ.get("LORAD_LIBRARY")
    if env:
        return [env]          # asked for this one: no fallback that would hide a mistake
    found = ctypes.util.find_library("lorad")
    return ([found] if found else []) + ["liblorad.so.2"]


def _load():
    errors = []
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
            continue
        for fn, (restype, argtypes) in _PROTOTYPES.items():
            f = getattr(lib, fn, None)   # None: a liblorad older than LORAD_2.1 (results)
            if f is not None:
                f.restype, f.argtypes = restype, argtypes
        return lib
    raise ImportError(
        "lorad: cannot load liblorad.so.2 (" + "; ".join(errors) + "). Install liblorad "
        "(cmake --install), or set LORAD_LIBRARY to the path of liblorad.so.2.")


lib = _load()
# refusals in words: liblorad 2.3 on (an older one would pass the flag on
# without making room, and the daemon would refuse every request)
HAS_WHY = getattr(lib, "lorad_library_version", None) is not None and \
    lib.lorad_library_version() >= 0x020300
