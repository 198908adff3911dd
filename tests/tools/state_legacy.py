#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Rewrite one version of a lorad state.json as a lorad from before the hash
tree recorded it: plain SHA-256 of each file, the identity SHA-256 over
each file's name, a NUL byte and its bytes, no hash_scheme or hash_chunk.

    state_legacy.py STATE_JSON NAME@VERSION
"""
import hashlib
import json
import os
import sys

FILES = ("adapter_config.json", "adapter_model.safetensors")


def main():
    path, vid = sys.argv[1], sys.argv[2]
    with open(path) as f:
        state = json.load(f)
    found = False
    for v in state["versions"]:
        if f'{v["name"]}@{v["version"]}' != vid:
            continue
        ident = hashlib.sha256()
        digests = []
        for name in FILES:
            with open(os.path.join(v["path"], name), "rb") as f:
                data = f.read()
            ident.update(name.encode() + b"\0")
            ident.update(data)
            digests.append(hashlib.sha256(data).hexdigest())
        v["sha256"] = ident.hexdigest()
        v["config_sha256"], v["weights_sha256"] = digests
        v.pop("hash_scheme", None)
        v.pop("hash_chunk", None)
        found = True
    if not found:
        sys.exit(f"{vid}: not in {path}")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
