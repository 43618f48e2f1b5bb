"""``python -m app.dev.serve``, what ``make run`` runs: from nothing, across a restart, beside another run, and
nothing left behind however it stops (Ctrl-C at any moment of start-up, or SIGKILL)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time

import httpx
import openai
import pytest
import redis

from app import ROOT
from app.config import read_env_file
from hostkit.local.engine import free_port

from ..support.platforms import BANNER_TIMEOUT, PAGES_TIMEOUT, Platform, get, wait_for_nothing_left

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


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
        question = [{"role": "user", "content": "What is the capital of France?"}]
        # Greedy: tiny-chat's eos is as likely as a character, so a sampled answer may end before its first one.
        stream = client.chat.completions.create(model="gpushare/tiny-chat", max_tokens=max_tokens, stream=True,
                                                messages=question, temperature=0)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        client.close()


def test_it_serves_from_nothing_beside_another_run_survives_a_restart_and_leaves_nothing(tmp_path):
    first = Platform(tmp_path / "a" / "data", free_port(), GPUSHARE_DEMO_REFERENCE="1")
    second = None
    try:
        first.wait_for("Starting the demo host", PAGES_TIMEOUT)  # the web app answers before the engine is up
        base = first.base
        assert get(f"{base}/")[0] == 200 and get(f"{base}/login")[0] == 200 and get(f"{base}/models")[0] == 200
        # A second run on the same machine, with its own port and data directory.
        second = Platform(tmp_path / "b" / "data", free_port())
        banner = first.wait_for_banner()
        assert "The demo host is serving" in banner and "The demo embeddings host is serving" in banner
        assert "(over the WireGuard overlay)" in banner
        env = read_env_file(first.data_dir / "demo.env")
        assert env["OPENAI_BASE_URL"] == f"{base}/v1"
        assert re.search(rf"demo API key: {re.escape(env['OPENAI_API_KEY'])}", banner)
        assert f"admin: {env['GPUSHARE_ADMIN_EMAIL']} / {env['GPUSHARE_ADMIN_PASSWORD']}" in banner
        assert 'curl -s "$OPENAI_BASE_URL/models"' in banner
        # The demo host's owner was paid through the Stripe stand-in; the admin sees the payout.
        assert "Paid the demo host's owner 12.34 USD through the Stripe stand-in" in banner
        with admin_browser(base, env) as browser:
            money = browser.get("/admin/money").text
            # The demo host was checked against the demo reference engine and verified before it served.
            trust = browser.get("/admin/trust").text
            demo_host = re.search(r'href="(/admin/trust/hosts/\d+)">demo host<', trust)[1]
            evidence = browser.get(demo_host).text
            fleet = browser.get("/admin/hosts").text
        # The demo host's engine runs in a podman container (make test installs podman), and the page says so.
        demo_row = fleet.split(">demo host<")[1].split("</tr>")[0]
        assert "engine in a podman container, isolated from the machine" in " ".join(demo_row.split()), demo_row
        paid = money.split('id="paid-payouts"')[1].split("</table>")[0]
        assert "host@gpushare.localhost" in paid and "$12.34" in paid
        assert "demo reference engine" in trust and "reference" in trust
        assert "verified: serving clients" in evidence and 'id="evidence-chart"' in evidence
        assert "The demo reference engine is up" in banner

        assert "Open LLMs through an OpenAI-compatible API" in get(f"{base}/")[1]
        assert 'name="password"' in get(f"{base}/login")[1]
        status, page = get(f"{base}/models")
        assert status == 200 and "Llama 3.1 8B Instruct" in page and "Apache-2.0" in page
        status, body = get(f"{base}/v1/models", {"Authorization": f"Bearer {env['OPENAI_API_KEY']}"})
        assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == [
            "gpushare/tiny-chat", "sentence-transformers/all-MiniLM-L6-v2"]
        # The demo, as the README tells it: the OpenAI SDK streams tokens from the demo host, and embeds text on the
        # demo embeddings host.
        assert chat(env)
        with openai.OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0) as sdk:
            vectors = sdk.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=["Paris", "Rome"])
        assert [len(v.embedding) for v in vectors.data] == [384, 384] and vectors.usage.cost > 0

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
                                    "hostkit agent: starting the engine"])
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
