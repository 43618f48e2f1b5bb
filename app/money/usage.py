"""What a client has spent: usage records summed by key and model, per day, and a page of recent requests."""
from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import func, select

from ..extensions import db
from ..models import ApiKey, CatalogModel, UsageRecord, User, utcnow

PAGE_SIZE = 25


@dataclass
class Totals:
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: int


def totals(user: User) -> Totals:
    row = db.session.execute(select(
        func.count(), func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
        func.coalesce(func.sum(UsageRecord.completion_tokens), 0), func.coalesce(func.sum(UsageRecord.cost), 0),
    ).where(UsageRecord.user_id == user.id)).one()
    return Totals(*row)


def by_key_and_model(user: User) -> list:
    """Rows of (key name, key prefix, model name, requests, prompt tokens, completion tokens, cost)."""
    return db.session.execute(
        select(ApiKey.name, ApiKey.prefix, CatalogModel.display_name, func.count(),
               func.sum(UsageRecord.prompt_tokens), func.sum(UsageRecord.completion_tokens),
               func.sum(UsageRecord.cost))
        .join(ApiKey, ApiKey.id == UsageRecord.api_key_id).join(CatalogModel, CatalogModel.id == UsageRecord.model_id)
        .where(UsageRecord.user_id == user.id)
        .group_by(ApiKey.id, CatalogModel.id).order_by(func.sum(UsageRecord.cost).desc(), ApiKey.id)).all()


def recent(user: User, page: int) -> tuple[list[UsageRecord], bool]:
    """One page of the newest requests, and whether there is an older page."""
    rows = db.session.scalars(
        select(UsageRecord).where(UsageRecord.user_id == user.id)
        .order_by(UsageRecord.created_at.desc(), UsageRecord.request_id)
        .offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE + 1)).all()
    return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE


@dataclass(frozen=True)
class DayAmount:
    """An amount of money (micro-USD) over one UTC day."""

    day: date
    amount: int

    @property
    def ts(self) -> int:
        """The day's start as Unix seconds, for charts."""
        return calendar.timegm(self.day.timetuple())


def utc_days(days: int, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The start of the first and the end of the last of the ``days`` UTC days ending today."""
    last = (now or utcnow()).astimezone(UTC).date()
    end = datetime.combine(last + timedelta(days=1), time(), UTC)
    return end - timedelta(days=days), end


def zero_filled(amounts: dict[date, int], start: datetime, days: int) -> list[DayAmount]:
    first = start.date()
    return [DayAmount(day, int(amounts.get(day) or 0)) for day in (first + timedelta(n) for n in range(days))]


def spend_per_day(user: User, days: int = 30, *, now: datetime | None = None) -> list[DayAmount]:
    """What ``user`` was charged on each of the last ``days`` UTC days, oldest first, days without usage as 0."""
    start, end = utc_days(days, now)
    day = func.date(func.timezone("UTC", UsageRecord.created_at))  # the UTC day, whatever the session's time zone
    rows = db.session.execute(
        select(day, func.sum(UsageRecord.cost))
        .where(UsageRecord.user_id == user.id, UsageRecord.created_at >= start, UsageRecord.created_at < end)
        .group_by(day)).all()
    return zero_filled(dict(rows), start, days)
