"""Weekly serving windows: when a host takes requests, in its own time zone.

A window is written ``mon-fri 22:00-08:00`` or ``sat,sun 00:00-24:00``: the
days it starts on, then its start and end. A window whose end is not after
its start runs past midnight into the next day. No windows means always.
The dashboard's schedule editor and ``hostkit schedule`` both use this form;
the database keeps the parsed windows as JSON.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from ..echo import shown

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WINDOWS = 28
_WINDOW = re.compile(r"^\s*(?P<days>[a-z,\-]+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")


class ScheduleError(ValueError):
    """A schedule that cannot be read; the message says which part and how to write it."""


def _minutes(text: str, *, end: bool) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    value = hours * 60 + minutes
    if minutes > 59 or value > 24 * 60 or (value == 24 * 60 and not end):
        raise ScheduleError(f"{text} is not a time of day (00:00 to 24:00)")
    return value


def _days(text: str) -> list[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ScheduleError(f"{shown(part)!r}: days are {', '.join(DAYS)}, as a list (sat,sun) or a range "
                                "(mon-fri)")
        start, stop = DAYS.index(first), DAYS.index(last or first)
        days.update(DAYS.index(DAYS[(start + i) % 7]) for i in range((stop - start) % 7 + 1))
    return sorted(days)


def parse(text: str) -> list[dict]:
    """Windows from text, one per line (or separated by ``;``); blank means always."""
    windows = []
    for line in re.split(r"[;\n]", (text or "").lower()):
        if not line.strip():
            continue
        match = _WINDOW.match(line)
        if match is None:
            raise ScheduleError(f"{shown(line.strip())!r}: write a window as DAYS HH:MM-HH:MM, e.g. "
                                "mon-fri 22:00-08:00")
        start, end = _minutes(match["start"], end=False), _minutes(match["end"], end=True)
        windows.append({"days": _days(match["days"]), "start": start, "end": end})
    if len(windows) > MAX_WINDOWS:
        raise ScheduleError(f"at most {MAX_WINDOWS} windows")
    return windows


def timezone(name: str) -> str:
    name = (name or "UTC").strip()
    if name not in available_timezones():
        raise ScheduleError(f"{shown(name)!r} is not a time zone name (e.g. UTC, Europe/Berlin, America/New_York)")
    return name


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _day_list(days: list[int]) -> str:
    if len(days) > 2 and days == list(range(days[0], days[-1] + 1)):
        return f"{DAYS[days[0]]}-{DAYS[days[-1]]}"
    return ",".join(DAYS[d] for d in days)


def format_windows(windows: list[dict]) -> str:
    return "\n".join(f"{_day_list(w['days'])} {_clock(w['start'])}-{_clock(w['end'])}" for w in windows)


def in_schedule(windows: list[dict], tz: str, now: datetime) -> bool:
    """Whether ``now`` (aware) falls in one of the windows, read in the host's time zone. No windows: always."""
    if not windows:
        return True
    try:
        local = now.astimezone(ZoneInfo(tz))
    except (ZoneInfoNotFoundError, ValueError):
        local = now
    minute = local.hour * 60 + local.minute
    today, yesterday = local.weekday(), (local - timedelta(days=1)).weekday()
    for window in windows:
        start, end = window["start"], window["end"]
        if end > start:
            if today in window["days"] and start <= minute < end:
                return True
        elif (today in window["days"] and minute >= start) or (yesterday in window["days"] and minute < end):
            return True
    return False
