# SPDX-License-Identifier: MIT
"""Fixtures: the real lorad daemon on the demo model (text, skills) and on a
model made by lorad-mkmodel (token ids), as tests/serve/serve_harness.c
starts it.

Paths come from the environment, which the ctest entry sets
(tests/python/CMakeLists.txt); without it they default to the build
folder ``build`` of this source tree:
  LORAD_LIBRARY   liblorad.so.2        LORAD_BIN      the daemon
  LORAD_MKMODEL   lorad-mkmodel        LORAD_CLI      lorad-cli
  LORAD_LAYOUT    the struct layout helper (tests/python/layout.c)
  LORAD_DEMO_ROOT the folder holding demo/
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, "build")


def _path(var, default):
    return os.environ.get(var) or default


LIBRARY = _path("LORAD_LIBRARY", os.path.join(BUILD, "lib", "liblorad.so.2"))
os.environ.setdefault("LORAD_LIBRARY", LIBRARY)      # before lorad is imported
sys.path.insert(0, os.path.join(ROOT, "python"))
LORAD_BIN = _path("LORAD_BIN", os.path.join(BUILD, "bin", "lorad"))
MKMODEL = _path("LORAD_MKMODEL", os.path.join(BUILD, "bin", "lorad-mkmodel"))
CLI = _path("LORAD_CLI", os.path.join(BUILD, "bin", "lorad-cli"))
LAYOUT = _path("LORAD_LAYOUT", os.path.join(BUILD, "bin", "python_layout"))
DEMO = _path("LORAD_DEMO_ROOT", ROOT)
DEMO_MODEL = os.path.join(DEMO, "demo", "model")
SKILLS = ("json", "sql", "support")


class Daemon:
    """One lorad process with its sockets in a private folder."""

    def __init__(self, model, *args):
        self.dir = tempfile.mkdtemp(prefix="lorad-py-")
        self.sock = os.path.join(self.dir, "lorad.sock")
        self.log = os.path.join(self.dir, "lorad.log")
        argv = [LORAD_BIN, "--model", model, "--socket", self.sock,
                "--admin-socket", os.path.join(self.dir, "admin.sock"), "--threads", "1",
                # the CPU backend is batch-invariant: concurrent requests give the
                # tokens of sequential ones, which the tests compare
                "--backend", "cpu", *args]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lorad exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.sock)
                return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"lorad did not start in 30 s:\n{self.read_log()}")

    def read_log(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(30)

    def stop(self):
        self.kill(signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)


def _need(path, what):
    if not os.access(path, os.X_OK):
        pytest.skip(f"{what} not built: {path}")


def start_demo():
    """A daemon on the demo model with its three skills."""
    _need(LORAD_BIN, "lorad")
    if not os.path.exists(os.path.join(DEMO_MODEL, "tokenizer.json")):
        pytest.skip(f"no demo model in {DEMO_MODEL}")
    args = []
    for s in SKILLS:
        args += ["--adapter", f"{s}={os.path.join(DEMO, 'demo', 'adapters', s)}"]
    return Daemon(DEMO_MODEL, *args)


@pytest.fixture(scope="session")
def demo():
    d = start_demo()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random model of lorad-mkmodel, large enough that 4000 tokens take seconds."""
    _need(MKMODEL, "lorad-mkmodel")
    out = str(tmp_path_factory.mktemp("model"))
    subprocess.run([MKMODEL, out, "--layers", "4", "--hidden", "256", "--heads", "4",
                    "--kv-heads", "2", "--ffn", "512", "--vocab", "256", "--max-pos", "8192",
                    "--seed", "3"], check=True, stdout=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_model):
    _need(LORAD_BIN, "lorad")
    d = Daemon(tiny_model)
    yield d
    d.stop()


@pytest.fixture
def fresh_tiny(tiny_model):
    """A daemon of this test alone, free to be killed."""
    _need(LORAD_BIN, "lorad")
    d = Daemon(tiny_model)
    yield d
    d.stop()


def heldout(n_per_skill=3):
    """(skill, prompt) pairs from demo/heldout.jsonl."""
    import json
    out, seen = [], {}
    with open(os.path.join(DEMO, "demo", "heldout.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if seen.get(row["skill"], 0) < n_per_skill:
                seen[row["skill"]] = seen.get(row["skill"], 0) + 1
                out.append((row["skill"], row["prompt"]))
    return out
