"""The config's fields are declared once, in the C++ table KR_TRANSFORMER_CONFIG_FIELDS.

Every path that walks fields (parse, emit, equality, to_dict, attributes, pickling, Python's
field list) is driven by that table, so these tests change each declared field in turn and
check that every path sees it: a field added to the table is covered here with no test edit.
"""
import copy
import pickle
import re
from pathlib import Path

import pytest

from kr_mini_llm import TransformerConfig, _C
from kr_mini_llm.model.config import FIELD_DOCS, FIELDS

ROOT = Path(__file__).resolve().parents[2]
TABLE = [tuple(f) for f in _C.TransformerConfig.fields()]


def _candidates(kind, value):
    if kind == "int":
        return [value * 2, value + 1, value - 1]
    if kind == "float":
        return [value * 2, value / 2, 0.5]
    if kind == "bool":
        return [not value]
    if kind == "int or None":
        return [32, 64] if value is None else [None, value * 2]
    if kind == "dict or None":
        return [{"type": "linear", "factor": 2.0}] if value is None else [None]
    raise AssertionError(f"no test values for field kind {kind!r}: add them here")


def _changed(base, name, kind):
    """base with `name` set to another value that keeps the config valid."""
    current = getattr(base, name)
    for v in _candidates(kind, current):
        if v == current:
            continue
        try:
            return base.replace(**{name: v}), v
        except ValueError:
            continue
    raise AssertionError(f"no valid other value for {name}")


def test_python_field_list_is_the_cpp_table():
    assert FIELDS == tuple(name for name, _, _ in TABLE)
    assert set(FIELD_DOCS) == set(FIELDS) and all(FIELD_DOCS.values())
    assert list(TransformerConfig.tiny().to_dict()) == list(FIELDS)


@pytest.mark.parametrize("name,kind,doc", TABLE, ids=[t[0] for t in TABLE])
def test_every_path_sees_each_field(name, kind, doc, tmp_path):
    base = TransformerConfig.tiny()
    other, value = _changed(base, name, kind)
    assert other != base, "equality ignores the field"
    assert other.to_dict()[name] == value, "to_dict misses the field"
    assert getattr(other, name) == value, "the attribute misses the field"
    # YAML out and back in, from a file and from a string.
    path = tmp_path / "m.yaml"
    other.save_yaml(path)
    assert TransformerConfig.from_yaml(path) == other, "emit or parse drops the field"
    assert TransformerConfig.from_dict(other.to_dict()) == other
    assert pickle.loads(pickle.dumps(other)) == other
    assert copy.deepcopy(other) == other
    # Plain attribute assignment reaches the same field.
    edited = TransformerConfig.tiny()
    setattr(edited, name, value)
    assert edited == other


def test_bindings_and_python_do_not_spell_field_names():
    # One place: the binding and the Python class expand the table, they never list fields.
    for rel in ("csrc/python/config_bindings.cpp", "kr_mini_llm/model/config.py"):
        text = (ROOT / rel).read_text()
        spelled = [n for n in FIELDS if re.search(rf"[\"']{n}[\"']", text)]
        assert not spelled, f"{rel} spells field names {spelled}; use the C++ table"
