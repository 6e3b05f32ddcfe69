"""The package's integer options share one range rule, `arguments.int_arg`, and one set of named
C type limits (`INT32_MAX`, `UINT32_MAX`, `INT64_MAX`) and n_ctx floor (`MIN_N_CTX`), all defined in
arguments.py: a second copy of either can drift from the first, and one option then takes different
values from the Python API, the command line and the server. The source checks read
python/ecso_edge with `ast`; the others check that each caller still answers in its own error."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import numpy as np
import pytest

from ecso_edge.arguments import INT32_MAX, MIN_N_CTX, UINT32_MAX

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "ecso_edge"
HOME = PACKAGE / "arguments.py"
NAMES = {"INT32_MAX", "UINT32_MAX", "INT64_MAX", "MIN_N_CTX"}
LIMITS = {2**31 - 1, 2**32 - 1, 2**63 - 1, 2**31, 2**32, 2**63}
# Chained comparisons that are no integer option's range: each with why it is not int_arg's job.
NOT_INTEGER_RANGES = {
    ("cli_options.py", "number_in.parse"): "a float flag's range",
    ("server/openai_schema.py", "_optional_number"): "a float field's range",
    ("server/app.py", "ServerOptions.__post_init__"): "the API key's characters, visible ASCII",
    ("report/stats.py", "rate"): "a precondition between two counts, not an option",
    ("tiny_models/gguf_io.py", "read_scalar_metadata"): "a GGUF header's version, read from a file",
}


def modules() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(PACKAGE)), ast.parse(p.read_text(), str(p)))
            for p in sorted(PACKAGE.rglob("*.py")) if p != HOME]


def functions_of(tree: ast.Module) -> dict[ast.AST, str]:
    """Each node's enclosing function, qualified by the classes and functions around it ("" at
    module level)."""
    owner: dict[ast.AST, str] = {}

    def visit(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = name
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f"{name}.{child.name}" if name else child.name
            owner[child] = inner
            visit(child, inner)

    visit(tree, "")
    return owner


def test_the_limits_are_defined_in_arguments_only() -> None:
    found = []
    for name, tree in modules():
        for node in ast.walk(tree):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            found += [f"{name}:{node.lineno} defines {t.id}" for t in targets
                      if isinstance(t, ast.Name) and t.id in NAMES]
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
                try:
                    value = ast.literal_eval(node)
                except ValueError:
                    continue
                if value in LIMITS:
                    found.append(f"{name}:{node.lineno} spells {ast.unparse(node)}")
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in LIMITS:
                found.append(f"{name}:{node.lineno} spells {node.value}")
    assert found == [], "import the limit from ecso_edge.arguments"


def test_integer_ranges_are_checked_by_int_arg_only() -> None:
    found = []
    for name, tree in modules():
        owner = functions_of(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "isinstance" and len(node.args) == 2 \
                    and ast.unparse(node.args[1]) == "int":
                found.append(f"{name}:{node.lineno} tests for an int: {ast.unparse(node)}")
            if isinstance(node, ast.Attribute) and ast.unparse(node) == "operator.index":
                found.append(f"{name}:{node.lineno} converts with operator.index")
            if isinstance(node, ast.Compare) and len(node.ops) == 2 \
                    and all(isinstance(op, (ast.Lt, ast.LtE)) for op in node.ops) \
                    and (name, owner[node]) not in NOT_INTEGER_RANGES:
                found.append(f"{name}:{node.lineno} checks a range in {owner[node] or 'the module'}: "
                             f"{ast.unparse(node)}")
    assert found == [], ("call ecso_edge.arguments.int_arg and word its refusal in the caller's error, "
                         "or list a range that is no integer option's in NOT_INTEGER_RANGES")


def test_every_exempt_range_still_exists() -> None:
    seen = set()
    for name, tree in modules():
        owner = functions_of(tree)
        seen |= {(name, owner[n]) for n in ast.walk(tree) if isinstance(n, ast.Compare) and len(n.ops) == 2}
    assert set(NOT_INTEGER_RANGES) <= seen


def test_the_command_line_words_the_rule_as_a_usage_error() -> None:
    from ecso_edge.cli_options import N_CTX, int_in

    assert N_CTX(str(MIN_N_CTX)) == MIN_N_CTX
    with pytest.raises(argparse.ArgumentTypeError, match=rf"^must be an integer from {MIN_N_CTX} to {INT32_MAX}, "
                                                         rf"got {MIN_N_CTX - 1}$"):
        N_CTX(str(MIN_N_CTX - 1))
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be an integer from 1 to 3 \(a meaning\), got 4$"):
        int_in(1, 3, " (a meaning)")("4")


def test_the_request_parser_words_the_rule_as_a_400() -> None:
    pytest.importorskip("fastapi")
    from ecso_edge.server.openai_schema import RequestError, parse_chat_request

    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert parse_chat_request({**body, "seed": UINT32_MAX}).seed == UINT32_MAX
    for seed in (UINT32_MAX + 1, True, 1.0, "1"):
        with pytest.raises(RequestError) as e:
            parse_chat_request({**body, "seed": seed})
        assert (e.value.status, e.value.param) == (400, "seed")
        assert e.value.message == f"'seed' must be an integer from 0 to {UINT32_MAX}, got {seed!r}"


def test_server_options_word_the_rule_as_a_config_error_and_keep_a_plain_int() -> None:
    pytest.importorskip("fastapi")
    from ecso_edge.errors import ConfigError
    from ecso_edge.server import ServerOptions

    options = ServerOptions(max_queue=np.int64(3))
    assert options.max_queue == 3 and type(options.max_queue) is int
    for value in (-1, True, 2.0):
        with pytest.raises(ConfigError) as e:
            ServerOptions(max_queue=value)  # type: ignore[arg-type]
        assert str(e.value) == f"ServerOptions.max_queue must be an integer from 0 to 1000000, got {value!r}"
