# SPDX-License-Identifier: MIT
"""python/ builds into a wheel offline, with the setuptools already installed."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


def test_wheel_builds_without_an_index(tmp_path):
    # asked in a child: importing setuptools here would clash with pytest's distutils
    if subprocess.run([sys.executable, "-c", "import setuptools, pip"]).returncode:
        pytest.skip("pip or setuptools missing (Debian: python3-pip, python3-setuptools)")
    src = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "python"), src,
                    ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
                    "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
                   check=True)
    wheels = list((tmp_path / "dist").glob("lorad-*.whl"))
    assert len(wheels) == 1
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    for mod in ("__init__", "_ffi", "_request", "client", "aio", "errors"):
        assert f"lorad/{mod}.py" in names
