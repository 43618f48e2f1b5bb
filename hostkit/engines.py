"""The engine a host's agent runs: vLLM's own image in Docker on a GPU host (``DockerEngine``), or vLLM's CPU build
as a process where there is no Docker (``ProcessEngine``: the demo and the tests); ``pick_engine`` chooses. Both
listen on the overlay address only, and start in float32 when the router asks (a reference engine)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from hostkit.client import HostkitError
from hostkit.engine_flags import parser_args

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

    def exit_status(self) -> int | None:
        process = self.engine.process if self.engine else None
        return process.poll() if process else None

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        self.engine, self.model, self.dtype = None, None, None


class DockerEngine:
    """vLLM's own image on a GPU host, with the NVIDIA runtime, listening on the overlay address only."""

    kind = "docker"
    container = "gpushare-engine"

    def __init__(self, image: str, ready_timeout: float = 1800):
        self.image, self.ready_timeout = image, ready_timeout
        self.model: str | None = None
        self.dtype: str | None = None
        self.host = self.port = None
        self.max_model_len = None

    def start(self, model: str, host: str, port: int, dtype: str | None = None, **parsers):
        subprocess.run(["docker", "rm", "-f", self.container], capture_output=True)
        command = ["docker", "run", "--detach", "--name", self.container, "--gpus", "all", "--ipc", "host",
                   "--network", "host", "--volume", "/var/lib/hostkit/hf-cache:/root/.cache/huggingface",
                   self.image, "--model", model, "--served-model-name", model, "--host", host, "--port", str(port),
                   *parser_args(**parsers), *(["--dtype", dtype] if dtype else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise HostkitError(f"docker run {self.image}: {done.stderr.strip()}")
        self.model, self.dtype, self.host, self.port = model, dtype, host, port
        try:
            self._wait_ready()
        except BaseException:  # not ready, or the agent is stopping: the container goes
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise HostkitError(f"the engine container exited; see `docker logs {self.container}`")
            try:
                with urllib.request.urlopen(f"{self.root_url}/v1/models", timeout=5):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(2)
        raise HostkitError(f"the engine was not ready after {self.ready_timeout:.0f}s")

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def alive(self) -> bool:
        done = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", self.container],
                              capture_output=True, text=True)
        return done.returncode == 0 and done.stdout.strip() == "true"

    def exit_status(self) -> int | None:
        done = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", self.container],
                              capture_output=True, text=True)
        return int(done.stdout) if done.returncode == 0 and done.stdout.strip().lstrip("-").isdigit() else None

    def stop(self) -> None:
        subprocess.run(["docker", "stop", "--time", "30", self.container], capture_output=True)
        subprocess.run(["docker", "rm", "-f", self.container], capture_output=True)
        self.model, self.dtype = None, None


def pick_engine(kind: str, data_dir: Path, venv: str | None):
    if kind == "auto":
        docker = shutil.which("docker") is not None and subprocess.run(
            ["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True
        ).stdout.find("nvidia") >= 0
        kind = "docker" if docker else "process"
    return DockerEngine(VLLM_IMAGE) if kind == "docker" else ProcessEngine(data_dir, venv)
