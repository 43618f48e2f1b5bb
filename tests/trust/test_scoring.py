"""The checks' arithmetic, table-driven: the greedy gap, the sampled z-score, outright violations, thresholds, and
which requests the checks can model."""
from __future__ import annotations

import math
import random

import pytest

from app.proxy.sampling import Sampling, sampling_of
from app.trust import scoring
from app.trust.scoring import Position

# A toy distribution over five tokens (log-probabilities), the reference's view at every position.
PROBABILITIES = [0.5, 0.25, 0.15, 0.07, 0.03]
TOP = tuple(math.log(p) for p in PROBABILITIES)


def at(token: int) -> Position:
    return Position(token, TOP[token], token + 1, TOP)


@pytest.mark.parametrize("tokens, gap", [
    ([0, 0, 0, 0], 0.0),
    ([0, 1], (TOP[0] - TOP[1]) / 2),
    ([4, 4], TOP[0] - TOP[4]),
])
def test_the_greedy_gap_is_how_far_the_hosts_tokens_trail_the_best(tokens, gap):
    assert scoring.greedy_statistic([at(t) for t in tokens]) == pytest.approx(gap)


def test_one_wild_token_is_capped():
    wild = Position(9, -1e4, 40_000, TOP)
    assert scoring.greedy_statistic([wild]) == scoring.MAX_GAP


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_tokens_drawn_from_the_reference_score_near_zero_and_unlikely_ones_high(temperature):
    rng = random.Random(7)
    weights = [p ** (1 / temperature) for p in PROBABILITIES]
    honest = [scoring.sampled_statistic([at(t) for t in rng.choices(range(5), weights, k=64)], temperature)
              for _ in range(200)]
    assert abs(sum(honest) / len(honest)) < 0.3
    assert max(honest) < 4
    unlikely = [at(t) for t in rng.choices([3, 4], k=64)]
    assert scoring.sampled_statistic(unlikely, temperature) > 6


@pytest.mark.parametrize("finish, stop_reason, tokens, max_tokens, broken", [
    ("length", None, [1, 2, 3], 3, None),
    ("length", None, [1, 2, 3], 8, "cut short"),
    ("stop", None, [1, 2, 99], 8, None),  # ends on an end-of-sequence token
    ("stop", None, [1, 2, 3], 8, "not an end-of-sequence token"),
    ("stop", "\n\n", [1, 2, 3], 8, None),  # a stop string ended it
    ("stop", 7, [1, 2, 3], 8, None),  # a stop token id ended it
])
def test_an_answer_that_breaks_a_rule_is_a_violation(finish, stop_reason, tokens, max_tokens, broken):
    positions = [Position(t, -0.1, 1, (-0.1,)) for t in tokens]
    found = scoring.violation(positions, finish_reason=finish, stop_reason=stop_reason, max_tokens=max_tokens,
                              end_tokens={99})
    assert (found is None) if broken is None else (broken in found)
    score = scoring.score(positions, temperature=0, greedy=True, finish_reason=finish, stop_reason=stop_reason,
                          max_tokens=max_tokens, end_tokens={99})
    assert (score.test == "violation") == (broken is not None)


def test_the_slow_test_needs_enough_honest_greedy_canaries():
    assert "window" not in scoring.thresholds([0.001] * (scoring.MIN_WINDOW_SAMPLES - 1), [0.0] * 8, window=16)
    assert "window" in scoring.thresholds([0.001] * scoring.MIN_WINDOW_SAMPLES, [0.0] * 8, window=16)


def test_thresholds_sit_above_the_honest_noise():
    greedy = [0.0] * 20 + [0.002, 0.004]
    sampled = [-1.0, -0.5, 0.0, 0.5, 1.0] * 4
    found = scoring.thresholds(greedy, sampled, window=16)
    assert found["greedy"].threshold >= 2 * max(greedy)
    assert found["greedy"].threshold >= scoring.GREEDY_FLOOR
    assert found["sampled"].threshold >= max(sampled) + scoring.SAMPLED_ABOVE_MAX
    assert found["window"].mean < found["window"].threshold < found["greedy"].threshold
    # The mean of a window of heavy-tailed gaps strays well beyond its standard error: a margin over the mean too.
    mean = sum(greedy) / len(greedy)
    assert found["window"].threshold >= max(scoring.WINDOW_TIMES_MEAN * mean, mean + scoring.WINDOW_FLOOR)
    assert found["greedy"].as_dict()["samples"] == 22


@pytest.mark.parametrize("body, expected", [
    ({"temperature": 0}, Sampling(0.0)),
    ({"temperature": 0.7, "top_p": 0.9, "seed": 3}, Sampling(0.7, 0.9)),
    ({"temperature": 1, "top_k": 1}, Sampling(1.0, 1.0, 1)),
    ({"temperature": 1, "frequency_penalty": 0, "logit_bias": {}, "response_format": {"type": "text"}},
     Sampling(1.0)),
    ({}, None),  # the engine's default temperature is the model's generation config's
    ({"temperature": 2.0}, None),
    ({"temperature": 0.2}, None),
    ({"temperature": 0, "presence_penalty": 0.5}, None),
    ({"temperature": 0, "logit_bias": {"5": 10}}, None),
    ({"temperature": 0, "tools": [{"type": "function"}]}, None),
    ({"temperature": 0, "response_format": {"type": "json_object"}}, None),
    ({"temperature": 0, "guided_regex": "a+"}, None),
    ({"temperature": True}, None),
])
def test_only_sampling_the_checks_model_is_sampled(body, expected):
    assert sampling_of({"model": "m", "messages": [], **body}) == expected
    if expected is not None:
        assert expected.greedy == (expected.temperature == 0 or expected.top_k == 1)
