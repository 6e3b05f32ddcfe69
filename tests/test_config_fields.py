"""EcsoConfig's fields are declared once, in csrc/ecso/config.hpp, and repeated by hand in the
binding (its field list and properties), the stub _core.pyi and the configuration table of
docs/python-api.md. This reads the header's two structs and holds each copy to exactly its set of
names, and each default the table shows to the default EcsoConfig() has. Each integer field's range
is declared once too (config.hpp's ranges): the range the binding's TypeError names is the one
validate() enforces."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from ecso_edge import ConfigError, EcsoConfig
from ecso_edge.arguments import MAX_CACHE_MIB

REPO = Path(__file__).resolve().parent.parent
HEADER = REPO / "csrc" / "ecso" / "config.hpp"
STUB = REPO / "python" / "ecso_edge" / "_core.pyi"
DOCS = REPO / "docs" / "python-api.md"
# The binding flattens EcsoConfig's `sampling` member (a SamplingConfig) into EcsoConfig itself,
# each of SamplingConfig's fields under its own name: Python has temperature, not sampling.temperature.
FLATTENED = {"sampling": "SamplingConfig"}


def struct_members(source: str, struct: str) -> list[str]:
    """The data members of `struct` in a C++ header: member functions (static or not) are skipped."""
    return [name for _, name in struct_declarations(source, struct)]


def struct_declarations(source: str, struct: str) -> list[tuple[str, str]]:
    """(type, name) of each data member of `struct` in a C++ header."""
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
        name = re.findall(r"[A-Za-z_]\w*", declarator)[-1]
        members.append((declarator[:declarator.rindex(name)].strip(), name))
    return members


def header_fields() -> list[str]:
    return [name for _, name in header_declarations()]


def header_declarations() -> list[tuple[str, str]]:
    """(C++ type, name) of each field Python sees."""
    source = HEADER.read_text()
    fields = []
    for ctype, member in struct_declarations(source, "EcsoConfig"):
        fields += struct_declarations(source, FLATTENED[member]) if member in FLATTENED else [(ctype, member)]
    return fields


# The integer types of EcsoConfig's fields, with the values each holds.
INT_TYPES = {"int32_t": (-2**31, 2**31 - 1), "uint32_t": (0, 2**32 - 1), "uint64_t": (0, 2**64 - 1),
             "size_t": (0, 2**64 - 1)}


def int_fields() -> list[tuple[str, str]]:
    """(name, C++ integer type) of each integer field, std::optional<T> read as T."""
    out = []
    for ctype, name in header_declarations():
        inner = re.fullmatch(r"std::optional<(.*)>", ctype)
        ctype = inner[1] if inner else ctype
        if ctype in INT_TYPES:
            out.append((name, ctype))
    return out


def takes(field: str) -> str:
    """What the binding says `field` takes, from the TypeError of a value no field takes."""
    with pytest.raises(TypeError) as e:
        EcsoConfig(**{field: object()})
    m = re.fullmatch(rf"EcsoConfig field '{field}' takes (.*), not <object object at 0x[0-9a-f]+> \(object\)",
                     str(e.value))
    assert m, str(e.value)
    return m[1]


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


def test_the_header_parser_reads_member_types() -> None:
    source = "struct S { std::optional<int32_t> a; size_t b = 1; std::vector<std::pair<int32_t, float>> c; };"
    assert struct_declarations(source, "S") == [("std::optional<int32_t>", "a"), ("size_t", "b"),
                                                ("std::vector<std::pair<int32_t, float>>", "c")]


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


def test_every_integer_field_is_found() -> None:
    names = [name for name, _ in int_fields()]
    assert {"response_cut_chars", "top_k", "seed", "max_tokens_judge", "keep_conversations",
            "conversation_cache_mib", "judge_chunk_tokens"} <= set(names) and len(names) >= 11


@pytest.mark.parametrize("field, ctype", int_fields(), ids=lambda x: x if isinstance(x, str) else None)
def test_the_range_an_int_field_names_is_the_one_it_takes(field: str, ctype: str) -> None:
    """The binding's text of each int field ("an int in 0..1000") and validate()'s check come from
    one declaration (config.hpp's ranges): both ends are taken, one past either end is refused, a
    ConfigError naming the field where the C++ type holds the value, else the TypeError with the text."""
    text = takes(field)
    m = re.fullmatch(r"(?:None or )?an int in (-?\d+)\.\.(\d+)", text)
    assert m, f"{field} takes {text!r}, no int range"
    lo, hi = int(m[1]), int(m[2])
    type_lo, type_hi = INT_TYPES[ctype]
    assert type_lo <= lo <= hi <= type_hi
    for value in (lo, hi):
        assert getattr(EcsoConfig(**{field: value}), field) == value
    for value in (lo - 1, hi + 1):
        fits_the_type = type_lo <= value <= type_hi
        with pytest.raises(ConfigError if fits_the_type else TypeError, match=rf"\b{field}\b") as e:
            EcsoConfig(**{field: value})
        if not fits_the_type:
            assert text in str(e.value)


def test_the_servers_cache_bound_is_the_configs() -> None:
    # --cache-ram and ServerOptions(cache_ram_mib=) check their value in Python, before any config
    assert re.fullmatch(rf"an int in 0\.\.{MAX_CACHE_MIB}", takes("conversation_cache_mib"))
