import pytest

from app.accounts import tokens


def test_it_makes_keys_with_prefix_and_checksum():
    token = tokens.new_token(tokens.API_KEY_PREFIX)
    assert token.secret.startswith("gpsk_") and len(token.secret) == 5 + 32 + 6
    assert token.prefix == token.secret[:13]
    assert token.hash == tokens.hash_secret(token.secret) and token.secret not in token.hash
    assert tokens.well_formed(token.secret, tokens.API_KEY_PREFIX)


def test_it_never_repeats_a_key():
    assert len({tokens.new_token(tokens.API_KEY_PREFIX).secret for _ in range(1000)}) == 1000


def _typo(secret: str) -> str:
    i = 10
    return secret[:i] + ("A" if secret[i] != "A" else "B") + secret[i + 1:]


@pytest.mark.parametrize("mutate", [
    _typo,
    lambda s: s[:-1],
    lambda s: s + "x",
    lambda s: s.replace("gpsk_", "sk-"),
    lambda s: s[:5] + "!" + s[6:],
    lambda s: "",
])
def test_it_refuses_malformed_keys(mutate):
    secret = tokens.new_token(tokens.API_KEY_PREFIX).secret
    assert not tokens.well_formed(mutate(secret), tokens.API_KEY_PREFIX)
