"""The guard metric: a guard model (a TextModel in one of guard_formats' prompt formats) reads the
query and an answer. The same class judges step 2 when a session has a judge model; here it
scores answers for the evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .. import _core
from .._core import CancelToken
from ..errors import ConfigError, ContextOverflowError
from ..model import TextModel

__all__ = ["GuardMetric"]


class GuardMetric:
    """An EvalJudge named "guard". A verdict the format cannot read, or an answer too long for
    the guard's context, is a failed judgement (``unsafe`` None, ``error`` says why): the report
    counts it apart."""

    name = "guard"

    def __init__(self, model: TextModel, judge_format: str) -> None:
        if not isinstance(model, TextModel):
            raise TypeError(f"model must be an ecso_edge.TextModel, not {type(model).__name__}")
        if judge_format not in _core.guard_format_names():
            raise ConfigError(f"judge format '{judge_format}' is not one of: {', '.join(_core.guard_format_names())}")
        self._judge = _core.GuardJudge(model._core, judge_format)
        self.description = f"guard model {Path(model.path).name}, format {judge_format}"

    def verdict(self, scenario: str, query: str, answer: str, cancel: Optional[CancelToken]) -> dict[str, Any]:
        try:
            out = self._judge.judge(query, answer, cancel)
        except ContextOverflowError as e:
            return {"unsafe": None, "raw": "", "error": str(e)}
        error = None if out["unsafe"] is not None else "the output is not in the judge's format"
        return {"unsafe": out["unsafe"], "raw": out["raw"], "categories": out["categories"], "error": error}
