"""Extension objects, bound to an app by ``create_app`` through ``init_app``."""
from __future__ import annotations

import redis
from flask import Flask, current_app
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from htmx_flask import Htmx
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

REDIS_SOCKET_TIMEOUT = 2.0
REDIS_CONNECT_TIMEOUT = 1.0

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
    """One Redis client per app; redis-py connects lazily, on first command.

    Its pool is bounded and blocking: a burst of requests waits its turn for a connection (up to
    ``REDIS_POOL_TIMEOUT``) instead of failing. Short socket timeouts and one quick retry keep a request
    from hanging on a Redis that is stopped; the request path goes on without Redis (``app/shared.py``).
    """

    def init_app(self, app: Flask) -> None:
        config = app.config
        pool = redis.BlockingConnectionPool.from_url(
            config["REDIS_URL"], max_connections=config["REDIS_MAX_CONNECTIONS"], timeout=config["REDIS_POOL_TIMEOUT"],
            socket_timeout=REDIS_SOCKET_TIMEOUT, socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
            health_check_interval=30, retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1))
        app.extensions["redis"] = redis.Redis(connection_pool=pool)

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
