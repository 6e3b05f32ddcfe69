"""EcsoConfig's fields are declared once, in csrc/ecso/config.hpp, and repeated by hand in the
binding (its field list and properties), the stub _core.pyi and the configuration table of
docs/python-api.md. This reads the header's two structs and holds each copy to exactly its set of
names, and each default the table shows to the default EcsoConfig() has."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from ecso_edge import EcsoConfig

REPO = Path(__file__).resolve().parent.parent
HEADER = REPO / "csrc" / "ecso" / "config.hpp"
STUB = REPO / "python" / "ecso_edge" / "_core.pyi"
DOCS = REPO / "docs" / "python-api.md"
# The binding flattens EcsoConfig's `sampling` member (a SamplingConfig) into EcsoConfig itself,
# each of SamplingConfig's fields under its own name: Python has temperature, not sampling.temperature.
FLATTENED = {"sampling": "SamplingConfig"}


def struct_members(source: str, struct: str) -> list[str]:
    """The data members of `struct` in a C++ header: member functions (static or not) are skipped."""
    source = re.sub(r"//[^\n]*", "", source)
    m = re.search(r"\bstruct\s+" + struct + r"\s*\{", source)
    assert m, f"config.hpp has no struct {struct}"
    depth, at = 1, m.end()
    while depth:  # to the struct's closing brace
        depth += {"{": 1, "}": -1}.get(source[at], 0)
        at += 1
    body = source[m.end():at - 1]
    members = []
    for statement in body.split(";"):
        statement = " ".join(statement.split())
        if not statement or "(" in statement.split("=")[0] or statement.startswith("static "):
            continue  # a method, a static function or nothing
        declarator = statement.split("=")[0].split("{")[0].strip()
        members.append(re.findall(r"[A-Za-z_]\w*", declarator)[-1])
    return members


def header_fields() -> list[str]:
    source = HEADER.read_text()
    fields = []
    for member in struct_members(source, "EcsoConfig"):
        fields += struct_members(source, FLATTENED[member]) if member in FLATTENED else [member]
    return fields


def stub_fields() -> list[str]:
    tree = ast.parse(STUB.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EcsoConfig"]
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]


def cells(row: str) -> list[str]:
    """A Markdown table row's cells; a | inside backticks is text."""
    out, cell, code = [], "", False
    for c in row.strip().strip("|"):
        if c == "`":
            code = not code
        if c == "|" and not code:
            out.append(cell.strip())
            cell = ""
        else:
            cell += c
    return [*out, cell.strip()]


def docs_table() -> list[tuple[list[str], str]]:
    """The configuration table's rows: (the field names of its first column, its default cell)."""
    lines = DOCS.read_text(encoding="utf-8").splitlines()
    start = lines.index("| field | default | meaning |") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        first, default, _ = cells(line)
        names = re.findall(r"`([^`]*)`", first)
        assert first == ", ".join(f"`{n}`" for n in names), f"the first column names fields only: {first}"
        rows.append((names, default))
    return rows


def split_top_level(text: str) -> list[str]:
    """`text` split at the commas outside backticks and parentheses."""
    parts, part, code, depth = [], "", False, 0
    for c in text:
        code ^= c == "`"
        if not code:
            depth += {"(": 1, ")": -1}.get(c, 0)
        if c == "," and not code and depth == 0:
            parts.append(part.strip())
            part = ""
        else:
            part += c
    return [*parts, part.strip()]


VALUE = re.compile(r"(?:`(?P<code>[^`]*)`|(?P<bare>[^\s,:(`]+))(?P<rest>.*)", re.S)


def shown_value(text: str) -> Any:
    """The value a default cell shows, before any remark: `1927`, `None`, `"exact"`, `{}`, or a
    template whose newlines are written \\n; a remark follows in parentheses or after a colon."""
    m = VALUE.fullmatch(text.strip())
    assert m, f"no value in {text!r}"
    rest = m["rest"].strip()
    assert rest == "" or rest.startswith(":") or (rest.startswith("(") and rest.endswith(")")), text
    if m["bare"] is not None:
        return ast.literal_eval(m["bare"])
    try:
        return ast.literal_eval(m["code"])
    except (ValueError, SyntaxError):
        return m["code"].replace("\\n", "\n")  # template text, shown as it reads


def same(shown: Any, actual: Any) -> bool:
    if isinstance(shown, bool) or isinstance(actual, bool):
        return type(shown) is type(actual) and shown == actual  # 0 is not False
    if isinstance(actual, int) and not isinstance(shown, int):
        return False  # an int field shown as 16.0
    return type(shown) in (int, float, str, dict, type(None)) and shown == actual


def test_the_header_parser_reads_members_and_skips_functions() -> None:
    source = """struct S {
        int a = 1;            // a comment; with a semicolon
        std::vector<std::pair<int32_t, float>> b;
        std::optional<bool> c;
        static S make();
        void validate() const;
        std::string d = x::kD;
    };"""
    assert struct_members(source, "S") == ["a", "b", "c", "d"]


def test_the_binding_has_the_headers_fields() -> None:
    fields = header_fields()
    assert len(fields) == len(set(fields)) and len(fields) > 20
    assert sorted(EcsoConfig().to_dict()) == sorted(fields)
    properties = {name for name in dir(EcsoConfig) if isinstance(getattr(EcsoConfig, name), property)}
    assert properties == set(fields)


def test_the_stub_has_the_headers_fields() -> None:
    assert sorted(stub_fields()) == sorted(header_fields())  # the same names, each once


def test_the_docs_table_has_the_headers_fields() -> None:
    names = [n for row, _ in docs_table() for n in row]
    assert len(names) == len(set(names)), "a field has two rows"
    assert set(names) == set(header_fields())


@pytest.mark.parametrize("names, cell", docs_table(), ids=lambda x: ",".join(x) if isinstance(x, list) else None)
def test_the_docs_table_shows_the_defaults(names: list[str], cell: str) -> None:
    defaults = EcsoConfig().to_dict()
    parts = split_top_level(cell) if len(names) > 1 else [cell]
    if len(parts) == 1:
        parts *= len(names)  # one default shown for the row's fields alike
    assert len(parts) == len(names), f"{len(names)} fields, {len(parts)} defaults: {cell}"
    for name, part in zip(names, parts):
        shown = shown_value(part)
        assert same(shown, defaults[name]), f"{name}: the table shows {shown!r}, EcsoConfig() has {defaults[name]!r}"
