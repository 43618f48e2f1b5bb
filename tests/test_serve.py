"""``python -m app.dev.serve``, what ``make run`` runs: from nothing, across a restart, beside another run, and
nothing left behind however it stops (Ctrl-C at any moment of start-up, or SIGKILL)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import redis

from app import ROOT
from app.demo import read_env_file
from app.dev.instance import Instance
from app.dev.janitor import RUN_MARKER
from hostkit.engine import free_port

PAGES_TIMEOUT = 60  # the promise: pages within 60 s of a warm .venv
BANNER_TIMEOUT = 240  # then the demo host's engine (its model is built on the first run)
STOP_TIMEOUT = 90


def get(url: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _terminal_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, whatever pytest was started with


class Platform:
    """One ``python -m app.dev.serve`` in its own process group, as a terminal would run it."""

    def __init__(self, data_dir: Path, port: int, **env_overrides: str):
        self.data_dir, self.port, self.run_id = data_dir, port, uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "GPUSHARE_ENV", RUN_MARKER)}
        env.update({"GPUSHARE_DATA_DIR": str(data_dir), "PORT": str(port), "WEB_CONCURRENCY": "1",
                    "PYTHONUNBUFFERED": "1", RUN_MARKER: self.run_id,
                    "GPUSHARE_DEMO_MODEL": "tiny-chat",  # the demo host, with the small model the tests build
                    **env_overrides})
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = (data_dir.parent / f"serve-{port}-{time.monotonic_ns()}.log").open("w+")
        self.process = subprocess.Popen([sys.executable, "-m", "app.dev.serve"], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_terminal_signals)
        self.final = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        if self.log.closed:
            return self.final
        self.log.seek(0)
        return self.log.read()

    def wait_for(self, text: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while text not in self.output():
            assert self.process.poll() is None, f"serve exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} within {seconds}s:\n{self.output()}"
            time.sleep(0.2)
        return self.output()

    def wait_for_banner(self) -> str:
        return self.wait_for("Press Ctrl-C to stop.", BANNER_TIMEOUT)

    def _closed(self) -> None:
        self.final = self.output()
        self.log.close()

    def ctrl_c(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)  # what a terminal sends to the foreground group
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        finally:
            self._closed()

    def kill(self) -> None:
        """SIGKILL to serve alone: no chance to stop anything itself."""
        self.process.kill()
        self.process.wait()

    def instance(self) -> Instance:
        return Instance(json.loads((self.data_dir / "instance.json").read_text())["slot"])

    def leftovers(self) -> list[str]:
        return leftovers(self.data_dir, self.run_id, self.instance())


def leftovers(data_dir: Path, run_id: str, instance: Instance) -> list[str]:
    """Processes of the run (its marker, or its data directory on their command line), its network namespace
    and its interfaces."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(process.info["cmdline"] or [])
        try:
            marked = process.environ().get(RUN_MARKER) == run_id
        except (psutil.Error, OSError):
            marked = False
        if marked or str(data_dir) in cmdline:
            found.append(f"{process.info['pid']}: {cmdline[:200]}")
    if instance.demo_namespace in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
        found.append(f"network namespace {instance.demo_namespace}")
    for link in instance.links():
        if subprocess.run(["ip", "link", "show", link], capture_output=True).returncode == 0:
            found.append(f"interface {link}")
    return found


def wait_for_nothing_left(platform: Platform, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := platform.leftovers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@contextlib.contextmanager
def admin_browser(base: str, env: dict):
    """A browser session logged in as the demo admin, through the login form."""
    with httpx.Client(base_url=base, timeout=30) as browser:
        token = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', browser.get("/login").text)[1]
        browser.post("/login", data={"email": env["GPUSHARE_ADMIN_EMAIL"],
                                     "password": env["GPUSHARE_ADMIN_PASSWORD"], "csrf_token": token})
        yield browser


def chat(env: dict, max_tokens: int = 8) -> str:
    client = openai.OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0)
    try:
        stream = client.chat.completions.create(model="gpushare/tiny-chat", max_tokens=max_tokens, stream=True,
                                                messages=[{"role": "user", "content": "What is the capital of France?"}])
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        client.close()


def test_it_serves_from_nothing_beside_another_run_survives_a_restart_and_leaves_nothing(tmp_path):
    first = Platform(tmp_path / "a" / "data", free_port())
    second = None
    try:
        first.wait_for("Starting the demo host", PAGES_TIMEOUT)  # the web app answers before the engine is up
        base = first.base
        assert get(f"{base}/")[0] == 200 and get(f"{base}/login")[0] == 200 and get(f"{base}/models")[0] == 200
        # A second run on the same machine, with its own port and data directory.
        second = Platform(tmp_path / "b" / "data", free_port())
        banner = first.wait_for_banner()
        assert "Demo host ready in" in banner and "(over the WireGuard overlay)" in banner
        env = read_env_file(first.data_dir / "demo.env")
        assert env["OPENAI_BASE_URL"] == f"{base}/v1"
        assert re.search(rf"demo API key: {re.escape(env['OPENAI_API_KEY'])}", banner)
        assert f"admin: {env['GPUSHARE_ADMIN_EMAIL']} / {env['GPUSHARE_ADMIN_PASSWORD']}" in banner
        assert 'curl -s "$OPENAI_BASE_URL/models"' in banner
        # The demo host's owner was paid through the Stripe stand-in; the admin sees the payout.
        assert "Paid the demo host's owner 12.34 USD through the Stripe stand-in" in banner
        with admin_browser(base, env) as browser:
            money = browser.get("/admin/money").text
        paid = money.split('id="paid-payouts"')[1].split("</table>")[0]
        assert "host@gpushare.localhost" in paid and "$12.34" in paid

        assert "Open LLMs through an OpenAI-compatible API" in get(f"{base}/")[1]
        assert 'name="password"' in get(f"{base}/login")[1]
        status, page = get(f"{base}/models")
        assert status == 200 and "Llama 3.1 8B Instruct" in page and "Apache-2.0" in page
        status, body = get(f"{base}/v1/models", {"Authorization": f"Bearer {env['OPENAI_API_KEY']}"})
        assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["gpushare/tiny-chat"]
        # The demo, as the README tells it: the OpenAI SDK streams tokens from the demo host.
        assert chat(env)

        # Both runs serve at once, each from its own slot: networks, hub, port and engine apart.
        second.wait_for_banner()
        other = read_env_file(second.data_dir / "demo.env")
        assert chat(other) and chat(env)
        a, b = first.instance(), second.instance()
        assert a.slot != b.slot
        assert f"overlay address {a.wireguard_network.rsplit('.', 1)[0]}." in first.output()
        assert f"overlay address {b.wireguard_network.rsplit('.', 1)[0]}." in second.output()
        assert second.ctrl_c() == 0, second.output()
        assert second.leftovers() == []
        assert chat(env), "stopping one run leaves the other serving"

        # Something in Redis too, to see it survive.
        cache = redis.Redis(unix_socket_path=str(first.data_dir / "redis" / "redis.sock"))
        cache.set("probe", "kept")
        cache.close()
    finally:
        for platform in (second, first):
            if platform is not None and platform.process.poll() is None:
                code = platform.ctrl_c()
    assert code == 0, first.output()
    assert "Stopped." in first.output()
    assert first.leftovers() == []

    again = Platform(first.data_dir, first.port)
    try:
        banner = again.wait_for_banner()
        assert read_env_file(first.data_dir / "demo.env") == env  # same key and passwords: the database kept them
        assert "Model catalog: 0 models added." in banner
        assert again.instance() == a, "a data directory keeps its slot"
        status, _ = get(f"{base}/v1/models", {"Authorization": f"Bearer {env['OPENAI_API_KEY']}"})
        assert status == 200
        cache = redis.Redis(unix_socket_path=str(first.data_dir / "redis" / "redis.sock"))
        assert cache.get("probe") == b"kept"
        cache.close()
        # The stand-in kept its state: reconciling finds the demo payout's transfer still at "Stripe".
        assert "Paid the demo host" not in banner  # paid once, on the first run
        with admin_browser(base, env) as browser:
            token = re.search(r'"X-CSRFToken": "([^"]+)"', browser.get("/admin/money").text)[1]
            result = browser.post("/admin/money/reconcile", headers={"X-CSRFToken": token, "HX-Request": "true"}).text
        assert "agree" in result, result
    finally:
        code = again.ctrl_c()
    assert code == 0, again.output()
    assert again.leftovers() == []


@pytest.mark.parametrize("moment", ["Applying database migrations", "Starting the demo host",
                                    "The demo host is approved"])
def test_ctrl_c_at_any_moment_of_start_up_leaves_nothing(tmp_path, moment):
    platform = Platform(tmp_path / "data", free_port())
    platform.wait_for(moment, BANNER_TIMEOUT)
    assert platform.ctrl_c() == 0, platform.final
    assert "Stopped." in platform.final
    assert platform.leftovers() == [], platform.final


def test_a_killed_serve_leaves_nothing(tmp_path):
    """SIGKILL while the demo engine loads: every child gets SIGTERM as its parent dies, and the janitor removes
    the rest (the embedded servers, the demo host's namespace, the hub's interface)."""
    platform = Platform(tmp_path / "data", free_port())
    platform.wait_for("The demo host is approved", BANNER_TIMEOUT)
    time.sleep(3)  # the agent is up and its engine loading
    assert platform.leftovers(), "the run is up"
    platform.kill()
    left = wait_for_nothing_left(platform, 60)
    platform._closed()
    assert left == [], platform.final
    # The data directory is free again: a new run starts on it.
    again = Platform(platform.data_dir, free_port(), GPUSHARE_DEMO_MODEL="none")
    try:
        again.wait_for("Press Ctrl-C to stop.", BANNER_TIMEOUT)
    finally:
        assert again.ctrl_c() == 0, again.final
    assert again.leftovers() == []


def test_a_second_run_on_the_same_data_directory_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with open(data_dir / "serve.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running platform holds it
        done = subprocess.run([sys.executable, "-m", "app.dev.serve"], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "GPUSHARE_DATA_DIR": str(data_dir)}, timeout=60)
    assert done.returncode == 1
    assert f"another platform is running on {data_dir}" in done.stderr
    assert "Traceback" not in done.stderr
