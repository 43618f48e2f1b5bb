"""What a client has spent: usage records summed by key and model, and a page of recent requests."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from .extensions import db
from .models import ApiKey, CatalogModel, UsageRecord, User

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
