"""Repeating someone's input in a message: never whole, never raw."""
from __future__ import annotations

SHOWN_CHARACTERS = 80


def shown(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """A client's (or host's) text as an error message may repeat it: printable, and at most ``limit``
    characters; never a whole huge input."""
    cleaned = "".join(c if c.isprintable() else "\ufffd" for c in text[:limit])
    return cleaned + ("…" if len(text) > limit else "")
