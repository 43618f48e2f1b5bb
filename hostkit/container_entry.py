"""The engine container's first process: runs vLLM, and ends it when the agent that started the container dies.

``python3 container_entry.py LIFELINE -- COMMAND...`` starts COMMAND, then reads the FIFO ``LIFELINE``, whose
other end the agent holds open for as long as it lives. When the agent ends, however it ends (SIGKILL
included), the FIFO reads end-of-file, and COMMAND gets SIGTERM (SIGKILL after a grace period): the container
stops, and nothing of the engine keeps the GPU. SIGTERM to this process (``docker stop``, ``podman stop``)
is passed on the same way. When the engine has ended it leaves ``exit.json`` beside the lifeline: its status, and
whether the kernel killed it for the container's memory limit. Standard library only: it runs in whatever image
the engine uses.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

GRACE_SECONDS = 20
EXIT_NOTE = "exit.json"  # written beside the lifeline when the engine has ended


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: container_entry.py LIFELINE -- COMMAND...", file=sys.stderr)
        return 2
    lifeline, command = argv[0], argv[2:]
    child = subprocess.Popen(command)
    stopping = threading.Event()

    def stop(why: str) -> None:
        if not stopping.is_set():
            stopping.set()
            print(f"container: {why}; stopping the engine", file=sys.stderr, flush=True)
            child.terminate()
            killer = threading.Timer(GRACE_SECONDS, child.kill)
            killer.daemon = True
            killer.start()

    def watch() -> None:
        try:
            fd = os.open(lifeline, os.O_RDONLY)  # waits for the agent's end, which it opened first
            while os.read(fd, 1):
                pass
        except OSError as error:
            stop(f"the agent's lifeline cannot be read ({error.strerror})")
            return
        stop("the agent is gone")

    threading.Thread(target=watch, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop(signal.Signals(signum).name))
    status = child.wait()
    code = 128 - status if status < 0 else status  # -9 (SIGKILL) becomes 137, as a shell reports it
    killed_by = signal.Signals(-status).name if status < 0 else None
    kills = oom_kills()
    if kills and not stopping.is_set():
        print("container: the engine was killed for going over the container's memory limit", file=sys.stderr,
              flush=True)
    try:  # for the agent, beside the lifeline: how it ended (the runtime cannot always tell an OOM kill)
        with open(os.path.join(os.path.dirname(lifeline), EXIT_NOTE), "w") as note:
            json.dump({"code": code, "signal": killed_by, "oom_kills": kills}, note)
    except OSError:
        pass
    return code


def oom_kills() -> int:
    """How many processes the kernel killed in this container for its memory limit (cgroup v2, then v1)."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as counters:
                for line in counters:
                    name, _, value = line.partition(" ")
                    if name == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
