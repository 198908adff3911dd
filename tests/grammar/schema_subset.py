# SPDX-License-Identifier: MIT
"""A validator for the JSON Schema subset lorad constrains to (type,
properties, required, additionalProperties, enum, const, items, minItems,
maxItems, minLength, maxLength): the tests check outputs with it, since
python3-jsonschema is not everywhere. validate() raises AssertionError."""

TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(v, s, path="$"):
    if s is True:
        return
    if "enum" in s:
        assert any(v == e and type(v) is type(e) or (v == e and not isinstance(v, bool) and
                   not isinstance(e, bool)) for e in s["enum"]), f"{path}: {v!r} not in enum"
    if "const" in s:
        assert v == s["const"], f"{path}: {v!r} != const"
    t = s.get("type")
    if t is not None:
        ts = t if isinstance(t, list) else [t]
        assert any(TYPES[x](v) for x in ts), f"{path}: {v!r} is not {t}"
    if isinstance(v, dict):
        props = s.get("properties", {})
        for r in s.get("required", []):
            assert r in v, f"{path}: {r} is required"
        if s.get("additionalProperties") is False:
            extra = set(v) - set(props)
            assert not extra, f"{path}: extra properties {extra}"
        for k, x in v.items():
            if k in props:
                validate(x, props[k], f"{path}.{k}")
            elif isinstance(s.get("additionalProperties"), dict):
                validate(x, s["additionalProperties"], f"{path}.{k}")
    if isinstance(v, list):
        assert len(v) >= s.get("minItems", 0), f"{path}: too few items"
        assert len(v) <= s.get("maxItems", 1 << 30), f"{path}: too many items"
        if "items" in s:
            for i, x in enumerate(v):
                validate(x, s["items"], f"{path}[{i}]")
    if isinstance(v, str):
        assert len(v) >= s.get("minLength", 0), f"{path}: too short"
        assert len(v) <= s.get("maxLength", 1 << 30), f"{path}: too long"
