"""``flask serve``, what ``make run`` runs: from nothing, across a restart, and nothing left behind."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import openai
import psutil
import redis

from app import ROOT, demo_network
from app.demo import read_env_file
from hostkit.engine import free_port

PAGES_TIMEOUT = 60  # the promise: pages within 60 s of a warm .venv
BANNER_TIMEOUT = 180  # then the demo host's engine (its model is built on the first run)



def get(url: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Platform:
    """One ``flask serve`` in its own process group, as a terminal would run it."""

    def __init__(self, data_dir: Path, port: int):
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "GPUSHARE_ENV")}
        env.update(GPUSHARE_DATA_DIR=str(data_dir), PORT=str(port), WEB_CONCURRENCY="1", PYTHONUNBUFFERED="1",
                   GPUSHARE_DEMO_MODEL="tiny-chat")  # the demo host, with the small model the tests build
        self.log = (data_dir.parent / f"serve-{port}-{time.monotonic_ns()}.log").open("w+")
        self.process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "serve"], cwd=ROOT,
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        if self.log.closed:
            return self.final
        self.log.seek(0)
        return self.log.read()

    def wait_for(self, text: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while text not in self.output():
            assert self.process.poll() is None, f"flask serve exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} within {seconds}s:\n{self.output()}"
            time.sleep(0.2)
        return self.output()

    def wait_for_banner(self) -> str:
        return self.wait_for("Press Ctrl-C to stop.", BANNER_TIMEOUT)

    def ctrl_c(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)  # what a terminal sends to the foreground group
        try:
            return self.process.wait(timeout=60)
        finally:
            self.final = self.output()
            self.log.close()


@contextlib.contextmanager
def admin_browser(base: str, env: dict):
    """A browser session logged in as the demo admin, through the login form."""
    with httpx.Client(base_url=base, timeout=30) as browser:
        token = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', browser.get("/login").text)[1]
        browser.post("/login", data={"email": env["GPUSHARE_ADMIN_EMAIL"],
                                     "password": env["GPUSHARE_ADMIN_PASSWORD"], "csrf_token": token})
        yield browser


def leftovers(data_dir: Path, port: int) -> list[str]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(data_dir) in cmdline or f"127.0.0.1:{port}" in cmdline or "wireguard-go gpushare-" in cmdline:
            found.append(f"{process.info['pid']}: {cmdline}")
    # The demo host's machine (a network namespace) and the hub's interface go too.
    if demo_network.NAMESPACE in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
        found.append(f"network namespace {demo_network.NAMESPACE}")
    for link in ("gpushare-hub", demo_network.ROUTER_SIDE):
        if subprocess.run(["ip", "link", "show", link], capture_output=True).returncode == 0:
            found.append(f"interface {link}")
    return found


def test_it_serves_from_nothing_survives_a_restart_and_leaves_nothing(tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"

    first = Platform(data_dir, port)
    try:
        first.wait_for("Starting the demo host", PAGES_TIMEOUT)  # the web app answers before the engine is up
        assert get(f"{base}/")[0] == 200 and get(f"{base}/login")[0] == 200 and get(f"{base}/models")[0] == 200
        banner = first.wait_for_banner()
        assert "Demo host ready in" in banner and "(over the WireGuard overlay)" in banner
        env = read_env_file(data_dir / "demo.env")
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
        client = openai.OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0)
        stream = client.chat.completions.create(model="gpushare/tiny-chat", max_tokens=8, stream=True,
                                                messages=[{"role": "user", "content": "What is the capital of France?"}])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text
        client.close()

        # Something in Redis too, to see it survive.
        cache = redis.Redis(unix_socket_path=str(data_dir / "redis" / "redis.sock"))
        cache.set("probe", "kept")
        cache.close()
    finally:
        code = first.ctrl_c()
    assert code == 0, first.output()
    assert "Stopped." in first.output()
    assert leftovers(data_dir, port) == []

    second = Platform(data_dir, port)
    try:
        banner = second.wait_for_banner()
        again = read_env_file(data_dir / "demo.env")
        assert again == env  # same key and passwords: the database kept them
        assert "Model catalog: 0 models added." in banner
        status, _ = get(f"{base}/v1/models", {"Authorization": f"Bearer {env['OPENAI_API_KEY']}"})
        assert status == 200
        cache = redis.Redis(unix_socket_path=str(data_dir / "redis" / "redis.sock"))
        assert cache.get("probe") == b"kept"
        cache.close()
        # The stand-in kept its state: reconciling finds the demo payout's transfer still at "Stripe".
        assert "Paid the demo host" not in banner  # paid once, on the first run
        with admin_browser(base, env) as browser:
            token = re.search(r'"X-CSRFToken": "([^"]+)"', browser.get("/admin/money").text)[1]
            result = browser.post("/admin/money/reconcile", headers={"X-CSRFToken": token, "HX-Request": "true"}).text
        assert "agree" in result, result
    finally:
        code = second.ctrl_c()
    assert code == 0, second.output()
    assert leftovers(data_dir, port) == []
