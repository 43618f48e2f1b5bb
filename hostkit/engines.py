"""The engine a host's agent runs: an isolated container under Docker or podman (``hostkit.container``), vLLM's
own image on a GPU host or this machine's engine image on a CPU one; or vLLM's CPU build as a plain process where
there is no container runtime (``ProcessEngine``). ``pick_engine`` chooses. All are reached on the overlay
address only, and start in float32 when the router asks (a reference engine)."""
from __future__ import annotations

import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

from hostkit.client import HostkitError
from hostkit.container import ContainerEngine
from hostkit.isolation import Image, Limits, docker_nvidia, nvidia_cdi, runtime_reachable

VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"  # the vLLM of hostkit/requirements-engine.txt


def log(message: str) -> None:
    print(f"hostkit agent: {message}", file=sys.stderr, flush=True)


def engine_metrics(root_url: str) -> dict[str, float]:
    """vLLM's Prometheus gauges and counters that the agent reports and drains on."""
    try:
        with urllib.request.urlopen(f"{root_url}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    wanted = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
              "vllm:generation_tokens_total": "generated"}
    values: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            values[wanted[name]] = values.get(wanted[name], 0.0) + float(line.rsplit(" ", 1)[1])
    return values


class ProcessEngine:
    """vLLM as a process on this machine (no Docker): the CPU build for the models hostkit can build locally."""

    kind = "process"

    def __init__(self, data_dir: Path, venv: str | None):
        self.data_dir, self.venv = data_dir, venv
        self.engine = None
        self.model: str | None = None
        self.dtype: str | None = None

    def start(self, model: str, host: str, port: int, dtype: str | None = None, **parsers):
        """``parsers``: ``tool_call_parser`` and ``reasoning_parser`` (``engine_flags.parser_settings``);
        ``dtype``: vLLM's ``--dtype`` (a reference engine's float32), None for the model's own."""
        from hostkit.local.engine import EngineError, serve
        from hostkit.local.groups import stop_leftover
        from hostkit.local.models import SERVED_NAMES

        local = {served: name for name, served in SERVED_NAMES.items()}
        if model not in local:
            raise HostkitError(f"{model} needs a GPU engine (Docker with the NVIDIA runtime); without Docker this "
                               f"machine serves {', '.join(local)} only")
        pid_file = self.data_dir / "engine.pid"
        if (leftover := stop_leftover(pid_file)) is not None:
            log(f"stopped the engine a previous agent left running (process group {leftover})")
        try:
            self.engine = serve(local[model], self.data_dir, host=host, port=port, venv=self.venv,
                                die_with_parent=True, pid_file=pid_file, dtype=dtype, **parsers)
        except EngineError as error:
            raise HostkitError(f"the engine did not start: {error}") from None
        self.model, self.dtype = model, dtype

    @property
    def root_url(self) -> str:
        return self.engine.root_url

    @property
    def max_model_len(self) -> int | None:
        return self.engine.max_model_len if self.engine else None

    def alive(self) -> bool:
        return self.engine is not None and self.engine.alive()

    def exit_reason(self) -> str:
        """How the engine ended, for the owner: " (killed by SIGKILL)", " with status 1", or ""."""
        process = self.engine.process if self.engine else None
        code = process.poll() if process else None
        if code is None:
            return ""
        return f" (killed by {signal.Signals(-code).name})" if code < 0 else f" with status {code}"

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        self.engine, self.model, self.dtype = None, None, None


def pick_engine(kind: str, data_dir: Path, venv: str | None, *, image: str | None = None,
                limits: Limits = Limits(), gpus: str | None = "all"):
    """The engine the agent runs: ``kind`` "docker" or "podman" (a container, ``hostkit.container``), "process"
    (vLLM's CPU build as a plain process), or "auto": Docker where it has the NVIDIA runtime, else podman where
    it can run a GPU (CDI) or this machine's engine image, else a process."""
    if kind == "auto":
        kind = _auto_kind(venv, image)
    if kind == "process":
        return ProcessEngine(data_dir, venv)
    if kind == "podman" and image is None and not nvidia_cdi():
        try:
            from hostkit.local.engine import EngineError
            from hostkit.local.image import PYTHON_IN_ROOT, engine_root
        except ImportError:  # an installed hostkit carries no local/: GPU hosts use vLLM's image
            raise HostkitError("podman without a GPU runs the engine image built from a gpushare checkout "
                               "(hostkit.local); give --engine-image, or set up the NVIDIA toolkit's CDI") from None
        try:
            root = engine_root(venv)
        except EngineError as error:
            raise HostkitError(f"no engine image for podman: {error}") from None
        return ContainerEngine("podman", Image(rootfs=root, python=PYTHON_IN_ROOT), data_dir, limits=limits,
                               gpus=None, local_sizing=True)
    return ContainerEngine(kind, Image(ref=image or VLLM_IMAGE), data_dir, limits=limits, gpus=gpus)


def _auto_kind(venv: str | None, image: str | None) -> str:
    if runtime_reachable("docker") and docker_nvidia():
        return "docker"
    if runtime_reachable("podman"):
        if image is not None or nvidia_cdi():
            return "podman"
        try:
            from hostkit.local.engine import EngineError, engine_python
        except ImportError:  # an installed hostkit carries no local/
            return "process"
        try:
            engine_python(venv)
            return "podman"
        except EngineError:
            pass
    return "process"
