"""The queues and how to put work on them (``jobs`` re-exports these; a job module imports them from here)."""
from __future__ import annotations

from typing import Callable

from flask import current_app
from rq import Queue

DEFAULT_QUEUE = "default"
VERIFY_QUEUE = "verification"  # app.proxy.sampling names it too: the request path queues samples without jobs
QUEUES = (DEFAULT_QUEUE, VERIFY_QUEUE)


def queue(name: str = DEFAULT_QUEUE) -> Queue:
    return Queue(name, connection=current_app.extensions["redis"])


def enqueue(func: Callable, *args, queue_name: str = DEFAULT_QUEUE, **kwargs):
    """Enqueue after the commit that made the work necessary, never before."""
    return queue(queue_name).enqueue(func, *args, **kwargs)
