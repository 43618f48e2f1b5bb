"""``flask serve``: migrate, seed, and run the whole platform until Ctrl-C.

It supervises the web app (gunicorn with gevent workers, running ``wsgi:app``)
and stops what it started, embedded servers included, when interrupted.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from . import ROOT, catalog, demo

READY_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30


class Interrupted(Exception):
    pass


def _detach_from_terminal() -> None:
    """Run in the child before exec: its own process group, so Ctrl-C reaches only this
    supervisor (which then stops the child gracefully), and SIGTERM if the supervisor dies."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def _child_env() -> dict[str, str]:
    """The children share this process's database, Redis and data directory."""
    env = dict(os.environ)
    config = current_app.config
    env["DATABASE_URL"] = config["SQLALCHEMY_DATABASE_URI"]
    env["REDIS_URL"] = config["REDIS_URL"]
    env["GPUSHARE_DATA_DIR"] = config["GPUSHARE_DATA_DIR"]
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _gunicorn_command(host: str, port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--worker-class", "gevent", "--workers", str(workers),
            "--bind", f"{host}:{port}", "--no-control-socket", "--graceful-timeout", "20",
            "--access-logfile", "-", "--chdir", str(ROOT), "wsgi:app"]


def _wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"the web server exited with status {process.returncode}; see the log above")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise click.ClickException(f"the web server did not answer {url} within {READY_TIMEOUT_SECONDS}s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _banner(info: demo.Demo, env_path: Path, public: str, model: str | None) -> str:
    try_model = [
        f"  .venv/bin/python -c 'import openai; [print(c.choices[0].delta.content or \"\", end=\"\", flush=True) "
        f"for c in openai.OpenAI().chat.completions.create(model=\"{model}\", stream=True, "
        f"messages=[{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]) if c.choices]'",
    ] if model else ["  (no demo host: start with --demo-model smollm2 to serve a model here)"]
    return "\n".join([
        "",
        f"gpushare is running at {public}",
        f"  admin: {info.admin_email} / {info.admin_password}",
        f"  demo client: {info.client_email} / {info.client_password}",
        f"  demo API key: {info.api_key}",
        f"  written to {env_path}",
        "",
        "Try it:",
        f"  set -a; . {env_path}; set +a",
        '  curl -s "$OPENAI_BASE_URL/models" -H "Authorization: Bearer $OPENAI_API_KEY"',
        *try_model,
        "",
        "Press Ctrl-C to stop.",
        "",
    ])


DEMO_MODELS = {"smollm2": catalog.DEMO_MODEL, "tiny-chat": catalog.TINY_TEST_MODEL}


def _start_demo_host(model: str, data_dir: Path):
    """vLLM serving ``model`` on this machine, registered as an approved host."""
    from hostkit.engine import EngineError, serve

    click.echo(f"Starting the demo host: {DEMO_MODELS[model]} on vLLM (CPU); this takes about 30 s...")
    try:
        engine = serve(model, data_dir / "engine")
    except EngineError as exc:
        raise click.ClickException(f"the demo host could not start: {exc}") from None
    click.echo(f"Demo host ready in {engine.ready_seconds:.0f}s at {engine.root_url}.")
    demo.register_demo_host(engine.root_url, DEMO_MODELS[model], Path(engine.model_dir),
                            Path(current_app.config["TOKENIZERS_DIR"]))
    return engine


@click.command("serve")
@click.option("--host", envvar="HOST", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", envvar="PORT", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", envvar="WEB_CONCURRENCY", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--demo-model", envvar="GPUSHARE_DEMO_MODEL", default="smollm2", show_default=True,
              type=click.Choice([*DEMO_MODELS, "none"]), help="What the demo host serves; none for no demo host.")
@with_appcontext
def serve_command(host: str, port: int, workers: int, demo_model: str) -> None:
    """Migrate, seed, and run the platform until Ctrl-C."""
    from flask_migrate import upgrade

    signal.signal(signal.SIGTERM, _raise_interrupted)
    data_dir = Path(current_app.config["GPUSHARE_DATA_DIR"])
    public = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    children: list[subprocess.Popen] = []
    engine = None
    try:
        click.echo("Applying database migrations...")
        upgrade()
        click.echo(f"Model catalog: {catalog.seed()} models added.")
        info = demo.ensure_demo(data_dir, f"{public}/v1")
        click.echo(f"Starting the web app on {public} ({workers} gevent workers)...")
        env = _child_env()
        web = subprocess.Popen(_gunicorn_command(host, port, workers), env=env, cwd=ROOT,
                               preexec_fn=_detach_from_terminal)
        children.append(web)
        for command in ("worker", "scheduler"):
            click.echo(f"Starting the RQ {command}...")
            children.append(subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", command], env=env,
                                             cwd=ROOT, preexec_fn=_detach_from_terminal))
        _wait_ready(f"{public}/healthz", web)
        if demo_model != "none":
            engine = _start_demo_host(demo_model, data_dir)
        click.echo(_banner(info, data_dir / "demo.env", public, DEMO_MODELS.get(demo_model)))
        while all(child.poll() is None for child in children) and (engine is None or engine.alive()):
            time.sleep(0.5)
        raise click.ClickException("a platform process exited unexpectedly; stopping the rest")
    except (KeyboardInterrupt, Interrupted):
        click.echo("\nStopping gpushare...")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not strand a server
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if engine is not None:
            engine.stop()
            demo.stop_demo_host()
        for child in reversed(children):
            _stop(child)
        services = current_app.extensions.get("embedded")
        if services is not None:
            services.stop()
        click.echo("Stopped.")
