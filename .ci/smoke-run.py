#!/usr/bin/env python3
"""`make run` from a fresh clone, as a new user runs it: it must serve the demo model, and Ctrl-C must leave
nothing behind (no process, network namespace or interface of the run). Standard library only: it runs
before anything is installed. Exit status 0 when all holds; otherwise the reason and the log's tail."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS = 1500  # a first run builds both virtualenvs and the demo model
STOP_SECONDS = 120
PORT = os.environ.get("SMOKE_PORT", "8000")


def fail(message: str, log: Path) -> None:
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:]) if log.exists() else "(no log)"
    print(f"make run smoke: FAILED: {message}\n--- last lines of {log} ---\n{tail}", file=sys.stderr)
    sys.exit(1)


def call(url: str, key: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {key}",
                                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def run_env(data_dir: Path) -> dict[str, str]:
    path = data_dir / "demo.env"
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name: value for name, value in pairs}


def leftovers() -> list[str]:
    """Processes that carry one of the run's markers or live in this checkout; the run's namespaces and links."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        marked = any(line.startswith(b"GPUSHARE_RUN_ID=") for line in environ)
        if state != "Z" and cmdline and (marked or str(ROOT) in cmdline):
            found.append(f"process {entry.name}: {cmdline[:160]}")
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found += [f"network namespace {name}" for name in namespaces if name.startswith("gs") and "demo" in name]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("gs") and ("-hub" in name or "-demo" in name or "-host" in name):
            found.append(f"interface {name}")
    if shutil.which("podman"):
        names = subprocess.run(["podman", "ps", "--all", "--format", "{{.Names}}"], capture_output=True,
                               text=True).stdout.split()
        found += [f"engine container {name}" for name in names if name.startswith("gpushare-engine-")]
    return found


def _terminal_signals() -> None:
    """As in a terminal: Ctrl-C acts, even when this script was started in the background (which ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def main() -> None:
    data_dir = ROOT / "instance"
    log = ROOT / "smoke-run.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV")}
    env["PORT"] = PORT
    started = time.monotonic()
    with log.open("w") as out:
        # A session of its own, as a terminal's foreground job: Ctrl-C is SIGINT to the whole group.
        make = subprocess.Popen(["make", "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_terminal_signals)
    base = f"http://127.0.0.1:{PORT}/v1"
    try:
        demo = {}
        while True:
            if make.poll() is not None:
                fail(f"make run exited with status {make.returncode} before serving", log)
            if time.monotonic() - started > START_SECONDS:
                fail(f"the demo models were not served within {START_SECONDS}s", log)
            demo = run_env(data_dir)
            if demo.get("OPENAI_API_KEY"):
                try:
                    models = {m["kind"]: m["id"] for m in call(f"{base}/models", demo["OPENAI_API_KEY"])["data"]}
                except (urllib.error.URLError, OSError, ValueError, KeyError):
                    models = {}
                if {"chat", "embedding"} <= models.keys():  # both demo hosts serve
                    break
            time.sleep(2)
        print(f"make run smoke: {models} served after {time.monotonic() - started:.0f}s", flush=True)
        answer = call(f"{base}/chat/completions", demo["OPENAI_API_KEY"], {
            "model": models["chat"], "max_tokens": 8, "temperature": 0,  # greedy: never an empty answer
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        text = answer["choices"][0]["message"]["content"]
        if not text or answer["usage"]["completion_tokens"] < 1:
            fail(f"the chat completion came back empty: {answer}", log)
        print(f"make run smoke: a chat completion answered {text!r}", flush=True)
        vectors = call(f"{base}/embeddings", demo["OPENAI_API_KEY"], {"model": models["embedding"],
                                                                       "input": "Paris", "encoding_format": "float"})
        if len(vectors["data"][0]["embedding"]) < 1 or vectors["usage"]["prompt_tokens"] < 1:
            fail(f"the embedding came back empty: {vectors}", log)
        print(f"make run smoke: an embedding of {len(vectors['data'][0]['embedding'])} numbers", flush=True)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)
        try:
            make.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            fail(f"make run did not stop within {STOP_SECONDS}s of Ctrl-C", log)
    time.sleep(1)
    left = leftovers()
    if left:
        fail("Ctrl-C left these behind: " + "; ".join(left), log)
    if "Stopped." not in log.read_text(errors="replace"):
        fail("make run did not say it stopped", log)
    print(f"make run smoke: passed in {time.monotonic() - started:.0f}s; Ctrl-C left nothing behind", flush=True)


if __name__ == "__main__":
    main()
