"""Guard-model prompt formats and output parsers (Llama Guard 3, Qwen3Guard-Gen, ShieldGemma,
Granite Guardian, a plain yes/no judge), implemented in the C++ core; docs/guard-formats.md.

    from ecso_edge.guard_formats import guard_format
    fmt = guard_format("llama-guard-3")
    text = fmt.user_message(query, response)   # the content of the judge's single user turn
    fmt.parse("unsafe\\nS1").unsafe               # True
"""

from __future__ import annotations

from ._core import GuardFormat, GuardVerdict, guard_format, guard_format_names

__all__ = ["GUARD_FORMATS", "GuardFormat", "GuardVerdict", "guard_format"]

GUARD_FORMATS: tuple[str, ...] = tuple(guard_format_names())
