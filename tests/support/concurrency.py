"""Racing the same work on several threads, released together."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable


def at_once(work: Callable, arguments: Iterable) -> None:
    """Run ``work(argument)`` for each argument on its own thread, all released at the same moment."""
    arguments = list(arguments)
    barrier = threading.Barrier(len(arguments))

    def run(argument):
        barrier.wait()
        work(argument)

    threads = [threading.Thread(target=run, args=(argument,)) for argument in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
