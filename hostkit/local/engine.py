"""The host's model engine: vLLM's OpenAI-compatible server as a child process.

Where there is no Docker (our test machines, the demo) the engine is
``python -m vllm.entrypoints.openai.api_server`` run from its own virtualenv,
``.venv-engine`` at the repository root (made by ``scripts/make-engine-venv.sh``),
so that the router's virtualenv never carries vLLM. This module itself uses the
standard library only and is safe to import from the router.

    python -m hostkit.local.engine serve --model tiny-chat --port 8001 --data-dir /tmp/engine
    python -m hostkit.local.engine build --model smollm2 --data-dir /tmp/engine
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from hostkit.engine_flags import engine_variables, parser_args
from hostkit.local.groups import die_with_parent, end_group, process_group_alive, record_group
from hostkit.local.models import MODELS, RUNNERS, SERVED_NAMES, TOOL_CALL_PARSERS, is_complete
from hostkit.local.store import link_tree, stored, user_cache

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".venv-engine"
# Written by scripts/make-engine-venv.sh once the install is complete.
VENV_STAMP = ".gpushare-engine-stamp"
REQUIREMENTS = REPO_ROOT / "hostkit" / "requirements-engine.txt"
MAKE_VENV_SCRIPT = REPO_ROOT / "scripts" / "make-engine-venv.sh"
MAKE_VENV_HINT = "run scripts/make-engine-venv.sh"
KV_CACHE_BYTES = 64 * 1024 * 1024
MAX_MODEL_LEN = 2048
# Each model served with the context length the catalog promises clients (a request the router admits must
# fit), and a KV cache that holds at least one sequence that long.
CONTEXT_LENGTHS = {"tiny-chat": 2048, "smollm2": 8192, "minilm": 256}
KV_CACHE_SIZES = {"tiny-chat": KV_CACHE_BYTES, "smollm2": 256 * 1024 * 1024, "minilm": KV_CACHE_BYTES}


class EngineError(RuntimeError):
    """The engine could not be built, started or reached."""


def engine_python(venv: str | os.PathLike | None = None) -> Path:
    """The engine virtualenv's python (``venv``, else $GPUSHARE_ENGINE_VENV, else .venv-engine), or EngineError."""
    venv = Path(venv or os.environ.get("GPUSHARE_ENGINE_VENV") or DEFAULT_VENV)
    python = venv / "bin" / "python"
    try:
        stamp = (venv / VENV_STAMP).read_text().strip()
    except OSError:
        stamp = None
    if not python.exists() or stamp is None:
        raise EngineError(f"no complete engine virtualenv at {venv}: {MAKE_VENV_HINT}")
    if stamp != venv_stamp():
        raise EngineError(f"the engine virtualenv at {venv} predates {REQUIREMENTS.name}: {MAKE_VENV_HINT}")
    return python


def venv_stamp() -> str:
    """What scripts/make-engine-venv.sh writes to the stamp: a hash of the requirements and of itself."""
    return hashlib.sha256(REQUIREMENTS.read_bytes() + MAKE_VENV_SCRIPT.read_bytes()).hexdigest()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the caller races anyone else for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# Threads per CPU engine where one machine runs several (vLLM's own placement otherwise).
CPU_THREADS_VARIABLE = "GPUSHARE_ENGINE_CPU_THREADS"


def engine_env(data_dir: str | os.PathLike, base: dict | None = None) -> dict:
    """Environment for engine processes: offline, no usage stats, every cache under ``data_dir`` but vLLM's
    own (``shared_vllm_cache``)."""
    data = Path(data_dir).resolve()
    env = dict(os.environ if base is None else base)
    # The router's virtualenv must not leak into the engine's interpreter.
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    env.update(engine_variables(str(data / "cache"), str(data / "config"),
                                vllm_cache=str(shared_vllm_cache(env))))
    env.update(local_variables(env))
    for name in ("cache", "config", "logs"):
        (data / name).mkdir(parents=True, exist_ok=True)
    return env


def shared_vllm_cache(env: Mapping[str, str]) -> Path:
    """vLLM's cache for every local engine of this user (``$XDG_CACHE_HOME/gpushare/vllm``): what vLLM learns
    about a model class, in a subprocess that imports it all again (7 s of CPU per start here), it learns once per
    vLLM install instead of once per engine. Its entries are keyed by the model code's hash and written atomically,
    so engines side by side share them safely."""
    return user_cache(env) / "vllm"


def local_variables(env: Mapping[str, str]) -> dict:
    """What a CPU engine of ours runs with besides ``engine_variables``: its engine core in the server's process,
    and $GPUSHARE_ENGINE_CPU_THREADS threads when ``env`` sets it.

    Several engines on one machine's CPU (the demo's, the tests'): vLLM would pin each to the same cores, where
    their spinning threads starve one another. Each gets this many threads, placed by the kernel."""
    variables = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    threads = env.get(CPU_THREADS_VARIABLE, "")
    if threads.isdigit() and int(threads) > 0:
        variables |= {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": threads}
    return variables


def local_sizing(model: str, dtype: str | None = None) -> dict:
    """How one of hostkit's local models is served: the context the catalog promises, a KV cache that holds it,
    its tool-call parser and runner (``Engine``'s keyword arguments)."""
    # A float32 engine (a reference) keeps its KV cache in float32 too: twice the bytes for the same context.
    kv_cache = KV_CACHE_SIZES[model] * (2 if dtype == "float32" else 1)
    return {"max_model_len": CONTEXT_LENGTHS[model], "kv_cache_bytes": kv_cache,
            "tool_call_parser": TOOL_CALL_PARSERS[model], "runner": RUNNERS.get(model)}


def cpu_flags(kv_cache_bytes: int, max_model_len: int | None, runner: str | None) -> list[str]:
    """vLLM's flags for a CPU engine: eager, one process, a KV cache of this size, this context, this runner."""
    return ["--enforce-eager", "--distributed-executor-backend", "uni", "--kv-cache-memory-bytes",
            str(kv_cache_bytes), "--disable-uvicorn-access-log",
            *(["--max-model-len", str(max_model_len)] if max_model_len else []),
            *(["--runner", runner] if runner else [])]


def ensure_model(model: str, models_dir: str | os.PathLike, *, python: str | os.PathLike | None = None,
                 data_dir: str | os.PathLike | None = None, timeout: float = 900) -> Path:
    """The folder ``models_dir/model``, linked to the machine's build (``hostkit.local.store``), which
    ``python -m hostkit.local.models`` in the engine venv makes the first time."""
    if model not in MODELS:
        raise EngineError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    target = Path(models_dir).resolve() / model
    if is_complete(target, model):
        return target

    def build(folder: Path) -> None:
        try:
            done = subprocess.run(
                [str(python or engine_python()), "-m", "hostkit.local.models", model, str(folder)],
                cwd=REPO_ROOT, env=engine_env(data_dir or target.parent), stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise EngineError(f"building {model} took over {timeout:.0f}s") from exc
        if done.returncode != 0 or not is_complete(folder, model):
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise EngineError(f"building {model} into {folder} failed (exit {done.returncode}):\n{tail}")

    return link_tree(stored(model, build), target)


class Engine:
    """One vLLM OpenAI-compatible server, in its own process group.

    ``start()`` returns once ``GET /v1/models`` lists the served model;
    ``stop()`` sends SIGTERM to the server, SIGKILL to its group after
    ``stop_grace`` seconds, and returns when no process of the group is left. Usable as a
    context manager.
    """

    def __init__(self, python: str | os.PathLike, model_dir: str | os.PathLike, served_name: str, *,
                 data_dir: str | os.PathLike, host: str = "127.0.0.1", port: int | None = None,
                 kv_cache_bytes: int = KV_CACHE_BYTES, max_model_len: int | None = MAX_MODEL_LEN,
                 tool_call_parser: str | None = None, reasoning_parser: str | None = None, runner: str | None = None,
                 dtype: str | None = None, extra_args: tuple[str, ...] = (), ready_timeout: float = 300,
                 drain_seconds: int = 5, stop_grace: float = 20, die_with_parent: bool = False,
                 pid_file: str | os.PathLike | None = None):
        self.python = Path(python)
        self.model_dir = Path(model_dir).resolve()
        self.served_name = served_name
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.kv_cache_bytes = kv_cache_bytes
        self.max_model_len = max_model_len
        self.tool_call_parser, self.reasoning_parser = tool_call_parser, reasoning_parser
        self.runner = runner
        self.dtype = dtype  # vLLM's --dtype (a reference engine's float32); None: the model's own
        self.extra_args = tuple(extra_args)
        self.ready_timeout = ready_timeout
        # On SIGTERM vLLM lets requests in flight finish for this long; the SIGKILL comes after stop_grace.
        self.drain_seconds = drain_seconds
        self.stop_grace = max(stop_grace, drain_seconds + 5)
        self.log_path = self.data_dir / "logs" / f"engine-{self.port}.log"
        # SIGTERM to the engine when the thread that started it ends (a long-lived daemon's main thread only).
        self.die_with_parent = die_with_parent
        # Where the running engine's group is recorded, so that whoever starts the next one stops this one if its
        # owner died without doing so (``stop_leftover``).
        self.pid_file = Path(pid_file) if pid_file else None
        self.process: subprocess.Popen | None = None
        self._run_dir: str | None = None
        self.ready_seconds: float | None = None

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, as the SDK takes it: ``http://host:port/v1``."""
        return f"{self.root_url}/v1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        args = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--shutdown-timeout", str(self.drain_seconds),
            *cpu_flags(self.kv_cache_bytes, self.max_model_len, self.runner),
        ]
        if self.dtype:
            args += ["--dtype", self.dtype]
        return args + parser_args(self.tool_call_parser, self.reasoning_parser) + list(self.extra_args)

    def start(self) -> Engine:
        if self.process is not None:
            raise EngineError("engine already started")
        env = engine_env(self.data_dir)
        # vLLM leaves IPC sockets and a rendezvous file in the temp dir; give it a short one that stop() removes.
        self._run_dir = tempfile.mkdtemp(prefix="gpushare-engine-")
        env["TMPDIR"] = env["VLLM_RPC_BASE_PATH"] = self._run_dir
        started = time.monotonic()
        try:
            with open(self.log_path, "wb") as log:
                # cwd is the data dir so nothing in the repository shadows the engine's imports.
                self.process = subprocess.Popen(
                    self.command(), cwd=self.data_dir, env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=die_with_parent if self.die_with_parent else None,
                )
            if self.pid_file:
                record_group(self.pid_file, self.process.pid)
            self._wait_ready(started + self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> None:
        while True:
            code = self.process.poll()
            if code is not None:
                raise EngineError(f"engine exited with code {code} before it was ready; log {self.log_path}:\n"
                                  + self.log_tail())
            if self._lists_model():
                return
            if time.monotonic() > deadline:
                raise EngineError(f"engine not ready after {self.ready_timeout:.0f}s; log {self.log_path}:\n"
                                  + self.log_tail())
            time.sleep(0.5)

    def _lists_model(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as response:
                models = json.load(response)
        except urllib.error.HTTPError as exc:
            exc.close()
            return False
        except (OSError, ValueError):
            return False
        return any(entry.get("id") == self.served_name for entry in models.get("data", []))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the server, SIGKILL to its whole process group after the grace period. Idempotent."""
        process = self.process
        if process is not None:
            pgid = process.pid  # start_new_session made the child its group's leader
            # Only the API server: it stops its engine core itself; a group-wide SIGTERM races that.
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            # The server is our child: poll() sees it run, and reaps it once it has ended.
            end_group(pgid, self.stop_grace, lambda: process.poll() is None or process_group_alive(pgid))
        if self._run_dir:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None
        if self.pid_file and process is not None:
            self.pid_file.unlink(missing_ok=True)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def serve(model: str, data_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int | None = None,
          venv: str | os.PathLike | None = None, served_name: str | None = None, **engine_args) -> Engine:
    """Build ``model`` under ``data_dir/models`` if needed and start an engine serving it."""
    python = engine_python(venv)
    data = Path(data_dir).resolve()
    model_dir = ensure_model(model, data / "models", python=python, data_dir=data)
    sizing = local_sizing(model, engine_args.get("dtype")) | engine_args
    return Engine(python, model_dir, served_name or SERVED_NAMES[model], data_dir=data,
                  host=host, port=port, **sizing).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hostkit.local.engine", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "build"):
        sub = commands.add_parser(name)
        sub.add_argument("--model", choices=MODELS, default="tiny-chat")
        sub.add_argument("--data-dir", required=True, help="models, caches and logs go here")
        sub.add_argument("--venv", default=None, help=f"engine virtualenv (default {DEFAULT_VENV})")
        if name == "serve":
            sub.add_argument("--host", default="127.0.0.1")
            sub.add_argument("--port", type=int, default=None, help="default: a free port")
            sub.add_argument("--served-model-name", default=None)
            sub.add_argument("--ready-timeout", type=float, default=300)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(ensure_model(args.model, Path(args.data_dir) / "models", python=engine_python(args.venv),
                               data_dir=args.data_dir))
            return 0
        return _serve_forever(args)
    except EngineError as exc:
        print(f"hostkit.local.engine: {exc}", file=sys.stderr)
        return 1


def _serve_forever(args) -> int:
    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()

    # A signal during start-up interrupts start(), which stops what it began.
    engine = serve(args.model, args.data_dir, host=args.host, port=args.port, venv=args.venv,
                   served_name=args.served_model_name, ready_timeout=args.ready_timeout)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        print(f"engine ready in {engine.ready_seconds:.1f}s: {engine.served_name} at {engine.base_url} "
              f"(pid {engine.pid}, log {engine.log_path})", flush=True)
        while not stopping.wait(1):
            if not engine.alive():
                print(f"hostkit.local.engine: engine died; log {engine.log_path}:\n{engine.log_tail()}",
                      file=sys.stderr)
                return 1
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
