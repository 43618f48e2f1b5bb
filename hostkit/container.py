"""The engine in a container, under Docker or podman (the same flags drive both, ``hostkit.isolation``), isolated
from the owner's machine and network.

What the serving container gets, and nothing more (the README's "Become a host" table says the same):

- **Network:** none. Its network namespace holds a loopback interface alone; vLLM listens on a Unix socket in a
  folder shared with the agent, and the agent publishes that socket on the overlay address (``hostkit.relay``).
  The engine can answer the hub's requests and reach nothing: not the owner's LAN, not this machine's other
  ports, not other overlay hosts, not the internet.
- **Privileges:** user 65534 (nobody), every capability dropped, ``no-new-privileges``, the runtime's default
  seccomp profile, refusing new user namespaces.
- **Files:** a read-only root; a size-limited tmpfs at /tmp for caches and scratch, and /dev/shm; the model
  read-only; the socket's folder, on the host's shared-memory tmpfs (what is written there counts as the
  container's memory). Nothing it writes reaches a disk.
- **Limits:** memory (no swap), processes and CPUs, from the agent's options (``Limits``).
- **GPUs:** only the selected ones (``--gpus device=...`` under Docker, CDI devices under podman).

The model is put in place first, by a separate container of its own (``prepare``): hostkit's local models are
built there with no network at all; a model from the Hugging Face hub is downloaded there, on the runtime's
default network, without a GPU and with only the models folder writable.

The container's first process (``hostkit/container_entry.py``) holds one end of a FIFO whose other end the agent
keeps open: when the agent dies, however it dies, the engine stops and the container with it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from hostkit.client import HostkitError
from hostkit.container_entry import EXIT_NOTE
from hostkit.engine_flags import parser_args
from hostkit.isolation import RUN_ROOT, UID, Image, Limits, last_line, limits_enforceable, run_command, scratch_env
from hostkit.relay import Relay

RUNTIMES = ("docker", "podman")
ENTRY = Path(__file__).resolve().parent / "container_entry.py"
# Where things are inside the container.
MODEL_MOUNT = "/model"
RUN_MOUNT = "/run/engine"  # the engine's socket and the agent's lifeline
SOCKET = "engine.sock"
LIFELINE = "lifeline"
ENTRY_MOUNT = "/opt/hostkit-entry.py"
STOP_SECONDS = 30  # `stop --time`: vLLM's drain, then SIGKILL


def container_name(data_dir: Path) -> str:
    """One engine container per agent, named after its data folder: two agents on a machine never meet."""
    return "gpushare-engine-" + hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:10]


class ContainerEngine:
    """vLLM in an isolated container (see the module's docstring), with the interface ``ProcessEngine`` has."""

    def __init__(self, runtime: str, image: Image, data_dir: Path, *, limits: Limits = Limits(),
                 gpus: str | None = "all", ready_timeout: float = 1800, local_sizing: bool = False):
        if runtime not in RUNTIMES:
            raise HostkitError(f"unknown container runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
        self.runtime, self.image, self.limits, self.gpus = runtime, image, limits, gpus
        self.kind = runtime
        self.data_dir = Path(data_dir).resolve()
        self.ready_timeout = ready_timeout
        # hostkit's local CPU models run with the sizes hostkit.local.engine gives them (context, KV cache).
        self.local_sizing = local_sizing
        self.container = container_name(self.data_dir)
        # The socket's folder, shared with the container, is on the host's shared-memory tmpfs: what the engine
        # writes there is memory, counted against its limit, never the host's disk.
        self.run_dir = RUN_ROOT / self.container
        self.model: str | None = None
        self.dtype: str | None = None
        self.host: str | None = None
        self.port: int | None = None
        self.max_model_len: int | None = None
        self.local_env: dict[str, str] = {}
        self._relay: Relay | None = None
        self._lifeline: int | None = None

    # Starting -------------------------------------------------------------------------------------------------
    def start(self, model: str, host: str, port: int, dtype: str | None = None, **parsers) -> None:
        """Prepare ``model``, then run it in the serving container published on ``host:port``; returns once it
        answers. HostkitError when it cannot."""
        if (why := limits_enforceable(self.runtime)) is not None:
            raise HostkitError(f"the engine container cannot start: {why}")
        self._remove()  # one an earlier agent left, if any
        model_dir, vllm_args = self.prepare(model, dtype)
        self._open_run_dir()
        try:
            self._relay = Relay(host, port, self.run_dir / SOCKET).start()
        except OSError as error:
            self.stop()
            raise HostkitError(f"cannot publish the engine on {host}:{port}: {error.strerror}") from None
        self.model, self.dtype, self.host, self.port = model, dtype, host, port
        command = run_command(
            self.runtime, self.image, self.limits, self.gpus,
            ENTRY_MOUNT, f"{RUN_MOUNT}/{LIFELINE}", "--",
            self.image.python, "-m", "vllm.entrypoints.openai.api_server", "--model", MODEL_MOUNT,
            "--served-model-name", model, "--uds", f"{RUN_MOUNT}/{SOCKET}",
            *vllm_args, *parser_args(parsers.get("tool_call_parser"), parsers.get("reasoning_parser")),
            *(["--dtype", dtype] if dtype else []),
            options=("--detach", "--name", self.container, "--volume", f"{model_dir}:{MODEL_MOUNT}:ro",
                     "--volume", f"{self.run_dir}:{RUN_MOUNT}:rw", "--volume", f"{ENTRY}:{ENTRY_MOUNT}:ro"),
            env=scratch_env() | self.local_env)
        try:
            # In the engine's own folder: conmon may leave files (an "oom" mark) where it was started.
            done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.data_dir)
            if done.returncode != 0:
                raise HostkitError(f"{self.runtime} run ({self.image.describe()}): {last_line(done.stderr)}")
            self._wait_ready()
        except BaseException:  # not ready, or the agent is stopping: the container goes
            self.stop()
            raise

    def prepare(self, model: str, dtype: str | None) -> tuple[Path, list[str]]:
        """Put ``model`` in place, in a container of its own; returns its folder and the vLLM flags it needs."""
        models = self.data_dir / "models"
        models.mkdir(parents=True, exist_ok=True)
        if self.local_sizing:
            from hostkit.local.engine import cpu_flags, local_sizing, local_variables
            from hostkit.local.models import SERVED_NAMES, is_complete

            local = {served: name for name, served in SERVED_NAMES.items()}
            if model not in local:
                raise HostkitError(f"{model} needs a GPU engine; this machine's engine image serves "
                                   f"{', '.join(local)} only")
            name = local[model]
            folder = models / name
            if not is_complete(folder, name):
                self._prepare_run(models, {"PYTHONPATH": "/opt/hostkit"},
                                  ["-m", "hostkit.local.models", name, f"/models/{name}"],
                                  ("--volume", f"{Path(__file__).resolve().parent}:/opt/hostkit/hostkit:ro"))
                if not is_complete(folder, name):
                    raise HostkitError(f"building {model} left no complete folder at {folder}")
            self.local_env = local_variables(os.environ)
            sizing = local_sizing(name, dtype)
            self.max_model_len = sizing["max_model_len"]
            return folder, cpu_flags(sizing["kv_cache_bytes"], sizing["max_model_len"], sizing["runner"])
        folder = models / model.replace("/", "--")
        if not (folder / ".gpushare-complete").exists():
            code = ("import sys\nfrom huggingface_hub import snapshot_download\n"
                    "snapshot_download(sys.argv[1], local_dir=sys.argv[2])\n")
            # The runtime's default network: the hub is the one thing this container is for.
            self._prepare_run(models, {}, ["-c", code, model, f"/models/{folder.name}"],
                              ("--network", "bridge"), offline=False)
            (folder / ".gpushare-complete").write_text(model)
        self.max_model_len, self.local_env = None, {}
        return folder, []

    def _prepare_run(self, models: Path, env: dict, args: list[str], options: tuple[str, ...] = (), *,
                     offline: bool = True) -> None:
        """One preparing container: no GPU, the models folder writable, no network unless ``options`` gives one,
        everything else as confined as the serving container's."""
        shutil.chown(models, UID, UID)
        command = run_command(self.runtime, self.image, self.limits, None, *args,
                              options=("--rm", "--name", f"{self.container}-prepare",
                                       "--volume", f"{models}:/models:rw", *options),
                              env=scratch_env(offline) | env)
        subprocess.run([self.runtime, "rm", "--force", f"{self.container}-prepare"], capture_output=True)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.ready_timeout,
                                  cwd=self.data_dir)
        except subprocess.TimeoutExpired:
            subprocess.run([self.runtime, "rm", "--force", f"{self.container}-prepare"], capture_output=True)
            raise HostkitError(f"preparing the model took over {self.ready_timeout:.0f}s") from None
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise HostkitError(f"preparing the model failed (exit {done.returncode}):\n{tail}")

    def _open_run_dir(self) -> None:
        """The folder shared with the container, holding the socket and the lifeline FIFO, whose write end this
        process keeps open until ``stop`` (or its death)."""
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        os.mkfifo(self.run_dir / LIFELINE, 0o600)
        for path in (self.run_dir, self.run_dir / LIFELINE):
            shutil.chown(path, UID, UID)
        # Read-write: opening never blocks. Not inherited by the runtime's processes (Python's fds are
        # close-on-exec), so only this process's death closes it.
        self._lifeline = os.open(self.run_dir / LIFELINE, os.O_RDWR)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise HostkitError(f"the engine container exited{self.exit_reason()}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.root_url}/v1/models", timeout=5):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(1)
        raise HostkitError(f"the engine was not ready after {self.ready_timeout:.0f}s:\n{self.logs()}")

    # Running --------------------------------------------------------------------------------------------------
    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _state(self) -> dict | None:
        done = subprocess.run([self.runtime, "inspect", "--format", "{{json .State}}", self.container],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return None
        try:
            state = json.loads(done.stdout)
        except ValueError:
            return None
        return state if isinstance(state, dict) else None

    def alive(self) -> bool:
        state = self._state() if self.model else None
        return bool(state and state.get("Running"))

    def exit_reason(self) -> str:
        """How the container ended, for the owner: " (out of memory: over its 2g limit)", " with status 1"."""
        state = self._state()
        if state is None:
            return " (the container is gone)"
        note = self._exit_note()
        if state.get("OOMKilled") or note.get("oom_kills"):
            return f" (out of memory: over its {self.limits.memory} limit)"
        if isinstance(note.get("signal"), str):
            return f" (killed by {note['signal']})"
        code = state.get("ExitCode")
        return f" with status {code}" if isinstance(code, int) else ""

    def _exit_note(self) -> dict:
        """What the container's first process noted as the engine ended (``container_entry``), or {}."""
        try:
            note = json.loads((self.run_dir / EXIT_NOTE).read_text())
        except (OSError, ValueError):
            return {}
        return note if isinstance(note, dict) else {}

    def logs(self, lines: int = 30) -> str:
        done = subprocess.run([self.runtime, "logs", "--tail", str(lines), self.container], capture_output=True,
                              text=True)
        return (done.stdout + done.stderr).strip()[-4000:] or "(no log)"

    def stop(self) -> None:
        """Stop the container (vLLM drains first), stop publishing it, and let go of the lifeline. Idempotent."""
        self._remove()
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.model, self.dtype = None, None

    def _remove(self) -> None:
        subprocess.run([self.runtime, "stop", "--time", str(STOP_SECONDS), self.container], capture_output=True)
        subprocess.run([self.runtime, "rm", "--force", self.container], capture_output=True)
