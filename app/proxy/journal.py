"""The request journal: what a router process knows of each request it holds money for, on local disk.

Every request that places a hold gets a file in the spool directory
(``USAGE_SPOOL_DIR``, local to the machine) before the hold is placed. While
a stream is delivered, each piece of text is appended just before it is sent
(so every token a client received is in it; a process killed mid-send bills
the piece it was sending, at most). When the request is settled the file is
removed. Two things can stop that:

- **The database is away at the end.** The settlement (every argument of
  ``gs_finish``) is appended and synced, the client still gets its whole
  answer, and the settlement is made later, exactly once (``gs_finish`` is
  idempotent by request id).
- **The process dies** (a worker killed mid-stream). Its files stay; any
  process on the machine that drains the spool sees that the writer is gone
  and settles each request from what it recorded: the text sent to the
  client is counted with the model's tokenizer and charged, and a request
  that sent nothing has its hold released.

``drain`` runs in every router process every ``DRAIN_SECONDS`` and in the
sweeper job, so a dead process's holds are settled within seconds and the
spool empties as soon as the database is back.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson
import psutil

from .settlement import settlement

log = logging.getLogger(__name__)

SUFFIX = ".req"
DRAIN_SECONDS = 5
# A request whose writer is alive but far past its own deadline (a hung process) is settled anyway.
OVERDUE_SECONDS = 60


@dataclass(frozen=True)
class Writer:
    """A process, told apart from a later one with the same pid by its start time."""

    pid: int
    started: float

    @classmethod
    def current(cls) -> Writer:
        pid = os.getpid()
        return cls(pid, psutil.Process(pid).create_time())

    def alive(self) -> bool:
        try:
            return psutil.Process(self.pid).create_time() == self.started
        except psutil.Error:
            return False


_writer: Writer | None = None


def writer() -> Writer:
    """This process (computed again after a fork)."""
    global _writer
    if _writer is None or _writer.pid != os.getpid():
        _writer = Writer.current()
    return _writer


class Entry:
    """One request's file, open for appending for the length of the request."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                                       0o600)
        me = writer()
        self._write({**header, "pid": me.pid, "pid_started": me.started})

    def _write(self, record) -> None:
        """Append one line. A write that fails (a full disk) stops this entry's writes, never the request: the
        journal is a safety net, and the request still settles the ordinary way."""
        if self._fd is None:
            return
        try:
            os.write(self._fd, orjson.dumps(record) + b"\n")
        except OSError as error:
            log.warning("the request journal %s cannot be written (%s); going on without it", self.path, error)
            self.close()

    def host(self, host_id: int) -> None:
        """The host the request went to (the last one named is the one that served it)."""
        self._write({"host": host_id})

    def delivered(self, index: int, text: str) -> None:
        """Text of choice ``index`` that the client was sent."""
        if text:
            self._write([index, text])

    def ended_on_eos(self, index: int) -> None:
        self._write({"eos": index})

    def spool(self, settlement: dict) -> None:
        """The settlement, kept on disk (the file and its directory synced) until the database takes it."""
        self._write({"settle": settlement})
        if self._fd is not None:
            os.fsync(self._fd)
            directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self.close()

    def release(self) -> None:
        """No usage to record, but a hold may exist: release it when the database is back."""
        self.spool({"release": True})

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class Journal:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._drainer: threading.Thread | None = None

    def open(self, request_id: str, header: dict) -> Entry:
        return Entry(self.directory / f"{request_id}{SUFFIX}", {"request_id": request_id, **header})

    def pending(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def drain(self, settle: Callable[[dict], None], release: Callable[[str], None],
              count: Callable[[str, list[str]], int], now: float | None = None) -> int:
        """Settle what finished while the database was away and what a dead process left. ``settle`` takes
        ``gs_finish``'s arguments, ``release`` a request id whose hold is to be released, ``count`` a model id
        and texts and gives their tokens. Returns how many requests were settled; stops at the first
        database error (the rest wait for the next round)."""
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            done = 0
            now = time.time() if now is None else now
            for path in self.pending():
                record = read(path)
                if record is None:
                    continue
                action = _action(record, now)
                if action is None:
                    continue
                kind, argument = action
                if kind == "settle":
                    settle(argument)
                elif kind == "release":
                    release(record.header["request_id"])
                else:
                    settle(_from_delivered(record, count))
                path.unlink(missing_ok=True)
                done += 1
            return done
        finally:
            self._lock.release()

    def start_draining(self, drain_once: Callable[[], None]) -> None:
        """Drain every ``DRAIN_SECONDS`` in a daemon thread (a greenlet under gevent), once per process."""
        if self._drainer is not None and self._drainer.is_alive():
            return

        def loop() -> None:
            while True:
                try:
                    drain_once()
                except Exception:  # the database is away, say: the next round tries again
                    log.warning("the request journal could not be drained yet", exc_info=True)
                time.sleep(DRAIN_SECONDS)

        self._drainer = threading.Thread(target=loop, name="journal-drain", daemon=True)
        self._drainer.start()


@dataclass
class Record:
    header: dict
    host: int | None = None
    texts: dict[int, list[str]] = field(default_factory=dict)
    eos: set[int] = field(default_factory=set)
    settlement: dict | None = None


def read(path: Path) -> Record | None:
    """A journal file, or None when it is unreadable (another process removed it meanwhile). A line cut short
    by a dying writer is left out."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError:
        return None
    try:
        record = Record(orjson.loads(lines[0]))
    except (ValueError, IndexError):
        return None
    for line in lines[1:]:
        try:
            item = orjson.loads(line)
        except ValueError:
            continue
        if isinstance(item, list) and len(item) == 2:
            record.texts.setdefault(int(item[0]), []).append(str(item[1]))
        elif isinstance(item, dict):
            record.host = item.get("host", record.host)
            if "eos" in item:
                record.eos.add(int(item["eos"]))
            if "settle" in item:
                record.settlement = item["settle"]
    return record


def _action(record: Record, now: float) -> tuple[str, dict | None] | None:
    """What to do with a journal file now: ("settle", gs_finish's arguments), ("release", None),
    ("delivered", None): settle what the record says was sent; or None: the request is still in flight."""
    if record.settlement is not None:
        if record.settlement.get("release"):
            return "release", None
        return "settle", record.settlement
    header = record.header
    writer_alive = Writer(header.get("pid", 0), header.get("pid_started", 0.0)).alive()
    if writer_alive and now < header.get("deadline", 0) + OVERDUE_SECONDS:
        return None
    if not record.texts:
        return "release", None  # nothing reached the client: nothing is owed
    return "delivered", None


def _from_delivered(record: Record, count: Callable[[str, list[str]], int]) -> dict:
    """gs_finish's arguments for a request whose process died: charge the text the client was sent."""
    header = record.header
    completion = count(header["model_hf_id"], ["".join(parts) for parts in record.texts.values()]) + len(record.eos)
    return settlement(header, status="router_died", http_status=200, completion_tokens=completion,
                      host_id=record.host, latency_ms=int((time.time() - header["started_at"]) * 1000))
