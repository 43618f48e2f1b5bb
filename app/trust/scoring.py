"""Scoring one answer against the reference: pure arithmetic on the reference's log-probabilities.

The reference engine reads the prompt and the host's output tokens in one pass (teacher forcing) and gives, at
each output position, the log-probability of the host's token and its top alternatives. Two tests follow:

- **greedy** (``temperature`` 0): an honest engine takes the most likely token, so the host's token should be the
  reference's top one. Near-ties flip with numeric noise (another GPU, dtype or batch) at a tiny cost; another
  model, or one quantised hard, picks tokens the reference ranks well below its best. The statistic is the mean
  *gap*: the reference's best log-probability less that of the host's token, in nats per token.
- **sampled** (``temperature`` T > 0): an honest engine draws each token from the reference's distribution at T,
  so the surprise of its tokens (minus their log-probability at T) averages the distribution's entropy. The
  statistic is a z-score: the total surprise less the total entropy, over the square root of the summed variance.
  A cheaper model's tokens are more surprising. ``top_p`` and ``top_k`` only make honest tokens less surprising,
  so ignoring them keeps the test one-sided and safe. The residual mass beyond the reference's top-k is modelled
  as tokens as likely as its k-th: calibration measures what bias that leaves.

Each test's threshold comes from a calibration (``calibration``): the same statistic over honest canaries.
An answer can also break a rule outright (a **violation**): it says it ran out of room with tokens to spare, or
says it stopped at the end of sequence without that token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean, pstdev

# The most tokens whose evidence a check keeps (the page's chart); the statistic uses all of them.
MAX_EVIDENCE = 512
# A token's gap or surprise is capped so that one wild token cannot stand for a whole answer's worth of evidence.
MAX_GAP = 20.0


@dataclass(frozen=True)
class Position:
    """The reference's view of one output position: the host's token, its log-probability and rank, and the
    top-k log-probabilities (best first)."""

    token: int
    logprob: float
    rank: int
    top: tuple[float, ...]

    @property
    def gap(self) -> float:
        best = self.top[0] if self.top else self.logprob
        return min(max(best - self.logprob, 0.0), MAX_GAP)


@dataclass(frozen=True)
class Score:
    test: str  # "greedy", "sampled" or "violation"
    statistic: float
    tokens: int
    reason: str = ""


def greedy_statistic(positions: list[Position]) -> float:
    return fmean(p.gap for p in positions)


def _temperature_terms(position: Position, temperature: float) -> tuple[float, float, float]:
    """(surprise of the host's token, entropy, variance of the surprise) at ``temperature``."""
    top = list(position.top) or [position.logprob]
    kth = top[-1]
    residual = max(0.0, 1.0 - sum(math.exp(lp) for lp in top))
    # The mass beyond the top-k, as tokens each as likely as the k-th one.
    spread = residual / math.exp(kth) if residual > 0 else 0.0
    scaled = [lp / temperature for lp in top]
    kth_scaled = kth / temperature
    peak = max(scaled)
    z = sum(math.exp(x - peak) for x in scaled) + spread * math.exp(kth_scaled - peak)
    log_z = peak + math.log(z)
    logs = scaled + ([kth_scaled] if spread else [])
    weights = [1.0] * len(scaled) + ([spread] if spread else [])
    probabilities = [w * math.exp(x - log_z) for w, x in zip(weights, logs)]
    entropy = -sum(p * (x - log_z) for p, x in zip(probabilities, logs))
    second = sum(p * (x - log_z) ** 2 for p, x in zip(probabilities, logs))
    surprise = min(-(position.logprob / temperature - log_z), entropy + MAX_GAP)
    return surprise, entropy, max(second - entropy * entropy, 0.0)


def sampled_statistic(positions: list[Position], temperature: float) -> float:
    surprise = entropy = variance = 0.0
    for position in positions:
        s, h, v = _temperature_terms(position, temperature)
        surprise, entropy, variance = surprise + s, entropy + h, variance + v
    return (surprise - entropy) / math.sqrt(variance + 1e-6)


def violation(positions: list[Position], *, finish_reason: str | None, stop_reason, max_tokens: int,
              end_tokens: set[int]) -> str | None:
    """A rule the answer breaks outright, in words; None when it keeps them all."""
    if not positions:
        return None
    if finish_reason == "length" and len(positions) < max_tokens:
        return (f"it said it ran out of room after {len(positions)} tokens, though it was allowed {max_tokens}: the "
                "answer was cut short")
    if finish_reason == "stop" and stop_reason is None and end_tokens and positions[-1].token not in end_tokens:
        return "it said the model ended its answer, but the last token is not an end-of-sequence token"
    return None


def score(positions: list[Position], *, temperature: float, greedy: bool, finish_reason: str | None,
          stop_reason, max_tokens: int, end_tokens: set[int]) -> Score:
    """The answer's test and statistic (a violation scores infinity)."""
    broken = violation(positions, finish_reason=finish_reason, stop_reason=stop_reason, max_tokens=max_tokens,
                       end_tokens=end_tokens)
    if broken:
        return Score("violation", math.inf, len(positions), broken)
    if greedy:
        return Score("greedy", greedy_statistic(positions), len(positions))
    return Score("sampled", sampled_statistic(positions, temperature), len(positions))


def evidence(positions: list[Position], texts: list[str] | None) -> list[dict]:
    """Per token, what the page charts: the reference's log-probability of the host's token and of its best token,
    the token's rank, and (for canaries only: never a client's words) its text."""
    rows = []
    for i, position in enumerate(positions[:MAX_EVIDENCE]):
        row = {"host": round(position.logprob, 4), "best": round(position.top[0] if position.top
                                                                   else position.logprob, 4),
               "rank": position.rank}
        if texts is not None:
            row["text"] = texts[i]
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Threshold:
    samples: int
    mean: float
    sd: float
    max: float
    threshold: float

    def as_dict(self) -> dict:
        return {"samples": self.samples, "mean": self.mean, "sd": self.sd, "max": self.max,
                "threshold": self.threshold}


# How far above honest noise each test's threshold sits. The greedy gap is mostly zero with a long tail (a near-tie
# that another GPU or dtype breaks the other way), so its threshold is also at least twice the largest honest value
# seen, and never below a floor that a handful of calibration canaries could miss the tail under; the z-score is
# close to normal; the slow test averages ``window`` greedy checks, so its noise shrinks by the square root of the
# window, but the mean of a few heavy-tailed values still strays far more than a normal one would (and the standard
# deviation that a calibration's dozens of canaries measure understates that tail): its threshold is also at least
# two and a half times the honest mean, and a thousandth of a nat above it.
GREEDY_SIGMAS, GREEDY_TIMES_MAX, GREEDY_FLOOR = 6.0, 2.0, 0.02
SAMPLED_SIGMAS, SAMPLED_ABOVE_MAX = 4.0, 1.0
WINDOW_SIGMAS, WINDOW_TIMES_MEAN, WINDOW_FLOOR = 6.0, 2.5, 0.001
# The slow test holds a host to the honest mean itself, so that mean must rest on this many greedy canaries at least.
MIN_WINDOW_SAMPLES = 16


def thresholds(greedy: list[float], sampled: list[float], window: int) -> dict[str, Threshold]:
    """Each test's threshold from honest statistics (a calibration's measurements)."""
    found = {}
    if greedy:
        mean, sd, top = fmean(greedy), pstdev(greedy), max(greedy)
        found["greedy"] = Threshold(len(greedy), mean, sd, top,
                                    max(mean + GREEDY_SIGMAS * sd, GREEDY_TIMES_MAX * top, GREEDY_FLOOR))
        if len(greedy) >= MIN_WINDOW_SAMPLES:
            found["window"] = Threshold(len(greedy), mean, sd / math.sqrt(window), top,
                                        max(mean + WINDOW_SIGMAS * sd / math.sqrt(window), WINDOW_TIMES_MEAN * mean,
                                            mean + WINDOW_FLOOR))
    if sampled:
        mean, sd, top = fmean(sampled), pstdev(sampled), max(sampled)
        found["sampled"] = Threshold(len(sampled), mean, sd, top,
                                     max(mean + SAMPLED_SIGMAS * sd, top + SAMPLED_ABOVE_MAX))
    return found
