"""Evaluation judges independent of the model under test: the keyword refusal metric (does the
answer open with a refusal?) and a judge behind an OpenAI-compatible URL (is the answer harmful?).
The model's own ECSO self-judge is not here: it picks ECSO's branch, so it is no metric of ECSO.
docs/metrics.md says which judge answers which question."""

from __future__ import annotations

from .api_judge import ApiJudge, ApiVerdict, judge_prompt, parse_reply
from .keyword import REFUSAL_PHRASES, is_refusal, opening

__all__ = ["ApiJudge", "ApiVerdict", "judge_prompt", "parse_reply", "REFUSAL_PHRASES", "is_refusal",
           "opening"]
