"""The reference engine's side of a check: one teacher-forced pass over the prompt and the host's tokens.

A reference is a platform-run host marked ``reference`` that serves the model in full precision (the agent starts
vLLM with ``--dtype float32`` for it). The check sends ``POST /v1/completions`` with the prompt's token ids and
the host's output ids as one prompt, ``max_tokens`` 1 and ``prompt_logprobs``: vLLM then scores every position
of the prompt, which for the output positions is the log-probability of the host's token and the reference's own
top choices.

Seeded re-generation (run the same request with the same seed, compare the tokens) is the other way in; it needs
the host's sampler to draw the same random numbers as the reference's, which differ between GPU models, CPU and
GPU, and batch shapes, and it cannot follow a host's answer past its first different token. Teacher forcing
scores every token of any answer, at any sampling settings, in a single prefill.
"""
from __future__ import annotations

import json
import math

import urllib3
from sqlalchemy import select

from ..extensions import db
from ..models import Host, HostModel
from .scoring import Position

TOP_LOGPROBS = 20  # vLLM's default --max-logprobs
TIMEOUT = urllib3.Timeout(connect=3, read=120)
_pool = urllib3.PoolManager(retries=False, maxsize=8)


class ReferenceError(Exception):
    """No reference could score the answer; the check is inconclusive (the message says why)."""


def reference_for(model_id: int) -> Host | None:
    """A reference host serving ``model_id`` now: approved, healthy and offering it."""
    return db.session.scalar(
        select(Host).join(HostModel, HostModel.host_id == Host.id)
        .where(Host.reference, Host.status == "approved", Host.healthy, Host.api_base.is_not(None),
               HostModel.model_id == model_id, HostModel.enabled)
        .order_by(Host.id).limit(1))


def teacher_force(api_base: str, model: str, prompt_ids: list[int], output_ids: list[int]) -> list[Position]:
    """The reference's view of each output position. Raises ReferenceError."""
    body = {"model": model, "prompt": prompt_ids + output_ids, "max_tokens": 1, "temperature": 0,
            "prompt_logprobs": TOP_LOGPROBS}
    try:
        response = _pool.request("POST", f"{api_base.rstrip('/')}/v1/completions", body=json.dumps(body),
                                 headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise ReferenceError(f"the reference engine could not be reached ({type(error).__name__})") from None
    if response.status != 200:
        raise ReferenceError(f"the reference engine answered {response.status}")
    try:
        scored = json.loads(response.data)["choices"][0]["prompt_logprobs"]
        assert isinstance(scored, list) and len(scored) == len(prompt_ids) + len(output_ids)
        return [_position(token, entry) for token, entry in zip(output_ids, scored[len(prompt_ids):])]
    except (ValueError, KeyError, IndexError, TypeError, AssertionError):
        raise ReferenceError("the reference engine answered something that is not prompt log-probabilities") from None


def _position(token: int, entry: dict) -> Position:
    own = entry[str(token)]
    logprob = float(own["logprob"])
    top = sorted((float(v["logprob"]) for v in entry.values() if int(v["rank"]) <= TOP_LOGPROBS), reverse=True)
    # vLLM writes -inf for a token the model cannot emit; JSON brings it as -Infinity.
    logprob = logprob if math.isfinite(logprob) else -1e4
    return Position(token, logprob, int(own["rank"]), tuple(lp if math.isfinite(lp) else -1e4 for lp in top))
