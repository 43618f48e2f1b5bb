"""``hostkit check``: can this machine serve models for gpushare? A verdict per part, in words or JSON.

Parts: the operating system, NVIDIA GPUs and their memory (through NVML, or
``nvidia-smi`` where the library is missing), the driver, the container
runtime (Docker with the NVIDIA runtime, or podman) and whether it runs the
engine isolated, free disk, and WireGuard (kernel module or ``wireguard-go``).
Exit status 0 when the machine can serve GPU models, 1 when it cannot.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "fail"
SUPPORTED_UBUNTU = ("22.04", "24.04")
MIN_DRIVER = 535  # CUDA 12.2, what current vLLM images need
DISK_OK_GIB, DISK_MIN_GIB = 100, 30
COMMAND_TIMEOUT = 15


@dataclass
class Check:
    name: str
    status: str
    detail: str
    data: dict = field(default_factory=dict)


def _run(*command: str) -> subprocess.CompletedProcess | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_os() -> Check:
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        release = {}
    name, version = release.get("ID", platform.system().lower()), release.get("VERSION_ID", "")
    data = {"id": name, "version": version, "pretty": release.get("PRETTY_NAME", platform.platform()),
            "kernel": platform.release(), "arch": platform.machine()}
    if name == "ubuntu" and version in SUPPORTED_UBUNTU:
        return Check("os", OK, f"{data['pretty']} (kernel {data['kernel']})", data)
    if platform.system() == "Linux":
        return Check("os", WARN, f"{data['pretty']}: hosts are tested on Ubuntu {' and '.join(SUPPORTED_UBUNTU)}",
                     data)
    return Check("os", FAIL, f"{platform.system()} is not supported: hosts run Linux", data)


def _gpus_from_nvml() -> tuple[list[dict], str | None, str | None] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append({"index": index, "name": pynvml.nvmlDeviceGetName(handle),
                         "uuid": pynvml.nvmlDeviceGetUUID(handle),
                         "memory_total_mib": memory.total // 2**20, "memory_free_mib": memory.free // 2**20})
        return gpus, driver, f"{cuda // 1000}.{cuda % 1000 // 10}"
    finally:
        pynvml.nvmlShutdown()


def _gpus_from_smi() -> tuple[list[dict], str | None, str | None] | None:
    done = _run("nvidia-smi", "--query-gpu=index,name,uuid,memory.total,memory.free,driver_version",
                "--format=csv,noheader,nounits")
    if done is None or done.returncode != 0:
        return None
    gpus, driver = [], None
    for line in done.stdout.strip().splitlines():
        index, name, uuid, total, free, driver = [part.strip() for part in line.split(",")]
        gpus.append({"index": int(index), "name": name, "uuid": uuid, "memory_total_mib": int(total),
                     "memory_free_mib": int(free)})
    return gpus, driver, None


def check_gpu() -> tuple[Check, Check]:
    """The GPU check and the driver check, from one look at the hardware."""
    found = _gpus_from_nvml() or _gpus_from_smi()
    if not found or not found[0]:
        gpu = Check("gpu", FAIL, "No NVIDIA GPU found. This machine cannot serve GPU models; it can run the "
                                 "CPU demo engine only.", {"gpus": []})
        return gpu, Check("driver", FAIL, "No NVIDIA driver found.", {})
    gpus, driver, cuda = found
    total = sum(g["memory_total_mib"] for g in gpus)
    names = ", ".join(f"{g['name']} ({g['memory_total_mib'] / 1024:.0f} GiB)" for g in gpus)
    gpu = Check("gpu", OK, f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}: {names}; {total / 1024:.0f} GiB in all",
                {"gpus": gpus, "vram_total_mib": total})
    major = int(driver.split(".")[0]) if driver and driver.split(".")[0].isdigit() else 0
    data = {"version": driver, "cuda": cuda}
    if major >= MIN_DRIVER:
        return gpu, Check("driver", OK, f"NVIDIA driver {driver}" + (f" (CUDA {cuda})" if cuda else ""), data)
    return gpu, Check("driver", FAIL, f"NVIDIA driver {driver} is too old: install {MIN_DRIVER} or newer", data)


def check_container() -> Check:
    """The container runtime the engine would run in, and whether it runs an engine isolated (``hostkit.container``):
    Docker with the NVIDIA runtime on a GPU host, or podman; the isolation is tried for real where the engine's
    image is on this machine."""
    from hostkit.isolation import docker_nvidia, nvidia_cdi, runtime_reachable

    found = [runtime for runtime in ("docker", "podman") if runtime_reachable(runtime)]
    installed = [runtime for runtime in ("docker", "podman") if shutil.which(runtime)]
    if not found:
        why = (f"{' and '.join(installed)} installed but not answering" if installed
               else "neither Docker nor podman is installed")
        return Check("container", WARN, f"No container runtime ({why}): the engine would run as a plain vLLM "
                                        "process, not isolated from this machine", {"runtime": None,
                                                                                  "installed": installed})
    runtime = found[0]
    data: dict = {"runtime": runtime, "installed": installed}
    data["nvidia"] = docker_nvidia() if runtime == "docker" else nvidia_cdi()
    image = _local_image(runtime)
    if image is None:
        data["isolated"] = None
        detail = (f"{runtime}{' with NVIDIA GPUs' if data['nvidia'] else ''}; the isolation is tried once the "
                  "engine's image is here")
        return Check("container", OK if data["nvidia"] or runtime == "podman" else WARN, detail, data)
    from hostkit.isolation import probe

    isolated, detail, seen = probe(runtime, image)
    data |= {"isolated": isolated, "image": image.describe(), "seen": seen}
    gpus = " with NVIDIA GPUs" if data["nvidia"] else ""
    return Check("container", OK if isolated else FAIL, f"{runtime}{gpus}: the engine runs {detail}"
                 if isolated else f"{runtime}{gpus}: the engine container is {detail}", data)


def _local_image(runtime: str):
    """The engine's image if it is on this machine already (nothing is pulled or built by a check)."""
    from hostkit.engines import VLLM_IMAGE
    from hostkit.isolation import Image

    done = _run(runtime, "image", "inspect", VLLM_IMAGE)
    if done is not None and done.returncode == 0:
        return Image(ref=VLLM_IMAGE)
    if runtime == "podman":
        try:
            from hostkit.local.image import PYTHON_IN_ROOT, cached_root
        except ImportError:  # an installed hostkit carries no local/
            return None
        root = cached_root()
        if root is not None:
            return Image(rootfs=root, python=PYTHON_IN_ROOT)
    return None


def check_disk(path: Path) -> Check:
    probe = path if path.exists() else Path("/")
    usage = shutil.disk_usage(probe)
    free_gib = usage.free / 2**30
    data = {"path": str(probe), "free_gib": round(free_gib, 1), "total_gib": round(usage.total / 2**30, 1)}
    if free_gib >= DISK_OK_GIB:
        return Check("disk", OK, f"{free_gib:.0f} GiB free at {probe}", data)
    if free_gib >= DISK_MIN_GIB:
        return Check("disk", WARN, f"{free_gib:.0f} GiB free at {probe}: room for small models only", data)
    return Check("disk", FAIL, f"only {free_gib:.0f} GiB free at {probe}: models need at least {DISK_MIN_GIB} GiB",
                 data)


def check_wireguard() -> Check:
    kernel = Path("/sys/module/wireguard").exists()
    userspace = shutil.which("wireguard-go") is not None
    tools = shutil.which("wg") is not None
    data = {"kernel_module": kernel, "wireguard_go": userspace, "wg_tool": tools}
    if not tools:
        return Check("wireguard", FAIL, "The `wg` tool is missing: install wireguard-tools", data)
    if kernel:
        return Check("wireguard", OK, "WireGuard kernel module loaded", data)
    if userspace:
        return Check("wireguard", OK, "wireguard-go (userspace) available; no kernel module", data)
    return Check("wireguard", FAIL, "Neither the WireGuard kernel module nor wireguard-go is available", data)


def run_checks(data_dir: Path) -> list[Check]:
    gpu, driver = check_gpu()
    return [check_os(), gpu, driver, check_container(), check_disk(data_dir), check_wireguard()]


def verdict(checks: list[Check]) -> tuple[bool, str]:
    failed = [c.name for c in checks if c.status == FAIL]
    if not failed:
        return True, "This machine can serve GPU models."
    return False, f"This machine cannot serve GPU models yet: fix {', '.join(failed)}."


SYMBOLS = {OK: "ok  ", WARN: "warn", FAIL: "FAIL"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostkit check", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("HOSTKIT_DATA_DIR", "/var/lib/hostkit")),
                        help="where models are stored (for the disk check)")
    args = parser.parse_args(argv)
    checks = run_checks(args.data_dir)
    ready, summary = verdict(checks)
    if args.json:
        print(json.dumps({"ready": ready, "summary": summary, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"[{SYMBOLS[c.status]}] {c.name:9s} {c.detail}")
        print(summary)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
