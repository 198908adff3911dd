# SPDX-License-Identifier: MIT
"""The ctypes structures against the C compiler's view of lorad.h."""
import ctypes
import json
import os
import subprocess

import pytest

from conftest import LAYOUT

from lorad import _ffi


@pytest.fixture(scope="module")
def c_layout():
    if not os.access(LAYOUT, os.X_OK):
        pytest.skip(f"layout helper not built: {LAYOUT} (target python_layout)")
    return json.loads(subprocess.run([LAYOUT], check=True, capture_output=True, text=True).stdout)


def test_every_struct_is_mirrored(c_layout):
    assert sorted(c_layout) == sorted(s.__name__ for s in _ffi.MIRRORED)


@pytest.mark.parametrize("struct", _ffi.MIRRORED, ids=lambda s: s.__name__)
def test_size_and_offsets(c_layout, struct):
    c = c_layout[struct.__name__]
    names = [f[0] for f in struct._fields_]
    assert names == list(c["fields"]), "fields differ in name or order"
    assert {n: getattr(struct, n).offset for n in names} == c["fields"]
    assert ctypes.sizeof(struct) == c["size"]
