"""The parts of the engine container that need no container runtime: the relay that publishes the engine's Unix
socket, and the first process that ends the engine when the agent dies. (The container itself, on real podman:
tests/overlay/test_overlay_container.py.)"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from hostkit import agent
from hostkit.container import ENTRY
from hostkit.isolation import gpu_args
from hostkit.local.engine import free_port
from hostkit.relay import Relay


class UnixEcho:
    """A Unix socket server that answers each connection with what it read, upper-cased, once the caller has
    finished sending (half-close), then closes."""

    def __init__(self, path):
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen()
        self.open = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        self.open += 1
        with conn:
            data = b""
            try:
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(data.upper())
            except OSError:  # the relay cut it
                pass
        self.open -= 1

    def close(self):
        self.server.close()


def ask(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def test_the_relay_joins_tcp_to_the_engine_socket_both_ways(tmp_path):
    echo = UnixEcho(tmp_path / "engine.sock")
    port = free_port()
    relay = Relay("127.0.0.1", port, tmp_path / "engine.sock").start()
    try:
        big = os.urandom(3 * 1024 * 1024).hex().encode()[:5_000_000]  # larger than any buffer on the way
        answers = {}

        def one(i):
            answers[i] = ask(port, b"request %d " % i + big)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert {i: answer == (b"request %d " % i + big).upper() for i, answer in answers.items()} == \
            {i: True for i in range(8)}
    finally:
        relay.stop()
        echo.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_the_relay_closes_a_connection_when_the_engine_is_not_listening(tmp_path):
    port = free_port()
    relay = Relay("127.0.0.1", port, tmp_path / "nothing.sock").start()
    try:
        try:
            answer = ask(port, b"GET /v1/models HTTP/1.1\r\n\r\n")
        except OSError:  # reset, or closed before the request was all sent: the caller retries
            answer = b""
        assert answer == b""
    finally:
        relay.stop()


def test_the_relay_cuts_what_it_relays_when_stopped(tmp_path):
    echo = UnixEcho(tmp_path / "engine.sock")
    port = free_port()
    relay = Relay("127.0.0.1", port, tmp_path / "engine.sock").start()
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(b"half a request")
    deadline = time.monotonic() + 10
    while echo.open == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    relay.stop()
    assert conn.recv(100) == b"", "the client sees the connection end"
    conn.close()
    echo.close()


def test_a_port_taken_is_an_error_at_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            Relay("127.0.0.1", taken.getsockname()[1], tmp_path / "engine.sock").start()


def _entry(tmp_path, *command):
    lifeline = tmp_path / "lifeline"
    os.mkfifo(lifeline)
    agent_end = os.open(lifeline, os.O_RDWR)
    marker = tmp_path / "child.pid"
    entry = subprocess.Popen([sys.executable, str(ENTRY), str(lifeline), "--", *command, str(marker)],
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return entry, agent_end, int(marker.read_text())


CHILD = [sys.executable, "-c", "import pathlib, os, sys, time\n"
                               "pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\ntime.sleep(600)"]


def test_the_engine_stops_when_the_agents_end_of_the_lifeline_closes(tmp_path):
    entry, agent_end, child = _entry(tmp_path, *CHILD)
    time.sleep(0.5)
    assert entry.poll() is None, "it runs while the agent holds the lifeline"
    os.close(agent_end)  # what the agent's death does, however it dies
    assert entry.wait(30) == 128 + signal.SIGTERM
    with entry.stderr:
        assert "the agent is gone; stopping the engine" in entry.stderr.read()
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_sigterm_to_the_container_reaches_the_engine(tmp_path):
    entry, agent_end, child = _entry(tmp_path, *CHILD)
    entry.send_signal(signal.SIGTERM)  # `podman stop`
    assert entry.wait(30) == 128 + signal.SIGTERM
    with entry.stderr:
        assert "SIGTERM; stopping the engine" in entry.stderr.read()
    os.close(agent_end)


@pytest.mark.parametrize("runtime, gpus, expected", [
    ("docker", "all", ["--gpus", "all"]),
    ("docker", "0,2", ["--gpus", '"device=0,2"']),
    ("podman", "0,2", ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=2"]),
    ("podman", "all", ["--device", "nvidia.com/gpu=all"]),
    ("podman", None, []),
])
def test_only_the_selected_gpus_are_handed_over(runtime, gpus, expected):
    assert gpu_args(runtime, gpus) == expected


@pytest.mark.parametrize("value", ["16g", "512M", "1024k"])
def test_memory_limits_are_sizes(value):
    assert agent._size(value) == value.lower()


@pytest.mark.parametrize("value", ["", "16", "lots", "-1g", "0g", "1.5g", "16gb"])
def test_a_memory_limit_that_is_not_a_size_is_refused(value):
    with pytest.raises(Exception, match="is not a size such as 16g"):
        agent._size(value)
