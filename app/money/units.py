"""Money's units. The ledger counts micro-USD (one dollar is ``MICRO``), Stripe counts cents, people type
dollars, and prices are micro-USD per million tokens."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICRO = 1_000_000  # micro-USD in a dollar
MICRO_PER_CENT = 10_000
TOKENS_PER_PRICE = 1_000_000  # a price is per million tokens
CURRENCY = "usd"
MAX_USD = 1_000_000_000  # no amount anyone types is larger; the ledger's integers hold far more


class AmountError(ValueError):
    """Text that is not an amount of dollars; the message is for the person who typed it."""


def usd(amount: str) -> int:
    """``"0.15"`` -> 150000 micro-USD. Refuses negatives, sub-micro precision and absurd sizes."""
    text = str(amount).strip().lstrip("$").replace(",", "")
    shown = repr(text[:24] + ("…" if len(text) > 24 else ""))
    try:
        value = Decimal(text) if len(text) <= 40 else Decimal("NaN")
    except InvalidOperation:
        raise AmountError(f"{shown} is not an amount in dollars, such as 0.15") from None
    if not value.is_finite():
        raise AmountError(f"{shown} is not an amount in dollars, such as 0.15")
    if value < 0:
        raise AmountError(f"{shown} must be zero or more")
    if value > MAX_USD:
        raise AmountError(f"{shown} is more than ${MAX_USD:,}")
    micro = value * MICRO
    if micro != micro.to_integral_value():
        raise AmountError(f"{shown} has more than six decimal places")
    return int(micro)


def dollars(whole: int) -> int:
    """Whole dollars in micro-USD."""
    return whole * MICRO


def format_usd(micro: int | None) -> str:
    """150000 -> ``"$0.15"``; keeps up to six decimals, at least two."""
    if micro is None:
        return ""
    text = f"{Decimal(micro) / MICRO:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def format_cents(cents: int) -> str:
    return format_usd(cents * MICRO_PER_CENT)


def cost_of(prompt_tokens: int, completion_tokens: int, input_price: int, output_price: int) -> int:
    """Micro-USD for a request at prices per million tokens, rounded up."""
    return -(-(prompt_tokens * input_price + completion_tokens * output_price) // TOKENS_PER_PRICE)


def usd_of(micro: int) -> float:
    """An amount as a number of dollars, for ``usage.cost`` in API answers (as OpenRouter reports it). Display only:
    every sum is made in integer micro-units."""
    return micro / MICRO
