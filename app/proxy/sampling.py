"""Which answers the router keeps for verification: the hot path samples and records, ``app.trust`` checks.

A request is sampled (with probability ``VERIFY_SAMPLE_RATE``) only when the checks model its sampling exactly:
greedy (``temperature`` 0), or an explicit temperature between ``MIN_TEMPERATURE`` and ``MAX_TEMPERATURE``, with
nothing else that bends the engine's distribution (penalties, logit bias, a grammar, tools...). A sampled answer's
record holds the prompt's token ids as the router rendered and counted them, the host's output ids for the first
choice, how it ended and the sampling asked for; it goes on the verification queue in one Redis call after the
request is settled. Canaries (``trust.canaries``) take the same path and keep their record on the call.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from rq import Queue

from ..shared import quietly

VERIFY_QUEUE = "verification"  # jobs.VERIFY_QUEUE: the request path imports nothing of jobs
CHECK_SAMPLE_JOB = "jobs.verification.check_sample"
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.5, 1.5
GREEDY_BELOW = 1e-5  # vLLM samples greedily below this temperature
MAX_CHECKED_TOKENS = 4096  # prompt and output: what one reference pass may take

# Parameters that leave the engine's next-token distribution as the reference computes it (or only cut the text
# short: a stop string), with the values of the others that are neutral.
MODELLED = {
    "model", "messages", "prompt", "stream", "stream_options", "max_tokens", "max_completion_tokens", "user",
    "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids", "n", "logprobs", "top_logprobs", "store",
    "metadata", "service_tier", "modalities", "prediction", "verbosity", "prompt_cache_key", "safety_identifier",
    "prompt_cache_retention", "prompt_cache_options", "skip_special_tokens", "spaces_between_special_tokens",
    "include_stop_str_in_output", "truncate_prompt_tokens", "chat_template_kwargs", "add_generation_prompt",
    "continue_final_message", "reasoning_effort",
}
NEUTRAL = {"frequency_penalty": (0,), "presence_penalty": (0,), "repetition_penalty": (1,), "length_penalty": (1,),
           "min_p": (0,), "min_tokens": (0,), "ignore_eos": (False,), "logit_bias": ({},), "echo": (False,),
           "best_of": (1,), "tool_choice": ("none",), "response_format": ({"type": "text"},)}


@dataclass(frozen=True)
class Sampling:
    """How the engine was asked to pick tokens. ``top_p`` and ``top_k`` only ever make an honest answer likelier
    than the checks assume, so they are kept for the record and not modelled."""

    temperature: float
    top_p: float = 1.0
    top_k: int = -1

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1


def sampling_of(body: dict) -> Sampling | None:
    """The sampling a request asked for when the checks model it exactly; None otherwise."""
    for name, value in body.items():
        if name not in MODELLED and value is not None and value not in NEUTRAL.get(name, ()):
            return None
    temperature, top_p, top_k = body.get("temperature"), body.get("top_p"), body.get("top_k")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        return None  # the engine's default comes from the model's generation config, which the router cannot see
    top_p = 1.0 if top_p is None else top_p
    top_k = -1 if top_k in (None, 0) else top_k
    sampling = Sampling(float(temperature), float(top_p), int(top_k))
    if sampling.greedy or MIN_TEMPERATURE <= sampling.temperature <= MAX_TEMPERATURE:
        return sampling
    return None


def chosen(rate: float, body: dict, prompt_ids: list[int] | None, max_tokens: int | None) -> Sampling | None:
    """Whether to keep this request's answer for a check (``rate`` of the requests the checks can model)."""
    if rate <= 0 or prompt_ids is None or random.random() >= rate:
        return None
    if len(prompt_ids) + (max_tokens or 0) > MAX_CHECKED_TOKENS:
        return None
    return sampling_of(body)


def keep(call, output_ids: list[int] | None, finish_reason: str | None, stop_reason) -> dict | None:
    """What a check needs of a chosen call's answer (``call.sampled`` set), as a plain dict that travels through
    Redis; a client's goes on the verification queue, a canary's stays on the call. None when not chosen."""
    if call.sampled is None or call.route is None or not isinstance(output_ids, list) or not output_ids:
        return None
    sample = {"request_id": call.request_id, "host_id": call.route.host_id, "model_id": call.offer.id,
              "prompt_ids": call.prompt_ids, "output_ids": output_ids, "finish_reason": finish_reason,
              "stop_reason": stop_reason if isinstance(stop_reason, (str, int)) else None,
              "max_tokens": call.granted, "sampling": asdict(call.sampled),
              "kind": "canary" if call.canary else "traffic"}
    if not call.canary:
        quietly(lambda: Queue(VERIFY_QUEUE, connection=call.gw.cache).enqueue(
            CHECK_SAMPLE_JOB, sample, result_ttl=0, failure_ttl=3600, job_timeout=120),
            None, "queueing a verification sample")
    return sample
