"""Extension objects, bound to an app by ``create_app`` through ``init_app``."""
from __future__ import annotations

import redis
from flask import Flask, current_app
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from htmx_flask import Htmx
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FlaskRedis:
    """One Redis client per app; redis-py connects lazily, on first command."""

    def init_app(self, app: Flask) -> None:
        app.extensions["redis"] = redis.Redis.from_url(app.config["REDIS_URL"], health_check_interval=30)

    @property
    def client(self) -> redis.Redis:
        return current_app.extensions["redis"]

    def __getattr__(self, name):
        return getattr(current_app.extensions["redis"], name)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
htmx = Htmx()
redis_client = FlaskRedis()
