"""Money's units: dollars as people type them, micro-USD as the ledger counts, and the cost of tokens."""
import pytest

from app.money import units


@pytest.mark.parametrize("text, micro", [("0.15", 150_000), ("$2.50", 2_500_000), ("0.000001", 1), ("0", 0)])
def test_it_reads_dollars_as_micro_units(text, micro):
    assert units.usd(text) == micro


@pytest.mark.parametrize("text", ["-1", "abc", "0.0000001", "NaN", "inf"])
def test_it_refuses_amounts_that_are_not_money(text):
    with pytest.raises(units.AmountError):
        units.usd(text)


@pytest.mark.parametrize("micro, text", [(150_000, "$0.15"), (2_500_000, "$2.50"), (1_000, "$0.001"), (0, "$0.00")])
def test_it_formats_micro_units(micro, text):
    assert units.format_usd(micro) == text


@pytest.mark.parametrize("prompt, completion, input_price, output_price, micro", [
    (0, 0, 150_000, 600_000, 0), (1, 0, 150_000, 600_000, 1),  # a fraction of a micro-dollar rounds up
    (1_000_000, 1_000_000, 150_000, 600_000, 750_000), (10, 20, 0, 100_000_000, 2_000),
])
def test_it_prices_tokens_per_million_rounding_up(prompt, completion, input_price, output_price, micro):
    assert units.cost_of(prompt, completion, input_price, output_price) == micro
