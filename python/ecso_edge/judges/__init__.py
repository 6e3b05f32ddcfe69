"""Evaluation judges independent of ECSO's branch decision: the keyword refusal metric (does the
answer open with a refusal?), a guard model (guard.py) and a judge behind an OpenAI-compatible URL
(api_judge.py), both asking whether the answer is harmful. The model's own ECSO self-judge is not
here: it picks ECSO's branch (the trigger), so it is no metric of ECSO. docs/metrics.md says which
judge answers which question."""

from __future__ import annotations

from .api_judge import ApiJudge, ApiMetric, ApiVerdict, judge_prompt, parse_reply
from .guard import GuardMetric
from .keyword import REFUSAL_PHRASES, is_refusal, opening

__all__ = ["ApiJudge", "ApiMetric", "ApiVerdict", "GuardMetric", "judge_prompt", "parse_reply", "REFUSAL_PHRASES",
           "is_refusal", "opening"]
