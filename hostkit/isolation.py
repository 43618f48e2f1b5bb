"""How a container of ours is confined, under Docker or podman alike: the flags (``isolation_args``), the seccomp
profile (``seccomp_args``), the runtime's quirks on this machine (``runtime_command``, ``limits_enforceable``), and
a probe that starts a container so confined and reads back what the kernel gave it (``probe``: ``hostkit check``
runs it). ``hostkit.container`` runs the engine with them.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hostkit.client import HostkitError
from hostkit.engine_flags import engine_variables

UID = 65534  # nobody: owns nothing on the host, and cannot become anyone else
USER = f"{UID}:{UID}"
SCRATCH = "/tmp"
RUN_ROOT = Path("/dev/shm")  # the host's shared-memory tmpfs
MAX_OPEN_FILES = 65536


@dataclass(frozen=True)
class Limits:
    """What the engine container may use: ``memory`` and ``tmpfs`` as the runtime takes sizes ("16g"),
    ``cpus`` None for all of them."""

    memory: str = "32g"
    pids: int = 4096
    cpus: float | None = None
    shm: str = "2g"
    tmpfs: str = "8g"


@dataclass(frozen=True)
class Image:
    """What the engine runs from: a registry image (``ref``) or, under podman, a root folder (``rootfs``), with
    the Python that has vLLM inside it."""

    ref: str | None = None
    rootfs: Path | None = None
    python: str = "python3"

    def command(self, *args: str) -> list[str]:
        """The end of a ``run`` command line: this image running its Python with ``args``."""
        if self.rootfs:
            # A root folder under an overlay of its own: whatever a container could write never reaches the
            # folder that other containers start from.
            return ["--rootfs", f"{self.rootfs}:O", self.python, *args]
        return ["--entrypoint", self.python, self.ref, *args]

    def describe(self) -> str:
        return f"the local engine root {self.rootfs}" if self.rootfs else self.ref


def runtime_reachable(runtime: str) -> bool:
    """Whether ``runtime`` is installed and answers (Docker's daemon runs; podman needs none)."""
    if shutil.which(runtime) is None:
        return False
    try:
        return subprocess.run([runtime, "info", "--format", "{{json .}}"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def docker_nvidia() -> bool:
    """Whether Docker's daemon has the NVIDIA container runtime."""
    try:
        done = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "nvidia" in done.stdout


def nvidia_cdi() -> bool:
    """Whether the NVIDIA Container Toolkit has described this machine's GPUs for CDI (podman's way to them)."""
    return any(Path(folder, name).exists() for folder in ("/etc/cdi", "/var/run/cdi")
               for name in ("nvidia.yaml", "nvidia.json"))


def run_command(runtime: str, image: Image, limits: Limits, gpus: str | None, *args: str,
                options: tuple[str, ...] = (), env: dict[str, str] | None = None) -> list[str]:
    """A ``run`` command line for a container of ours: confined (``isolation_args``), with no network unless
    ``options`` gives one, ``env`` set, and ``image``'s Python run with ``args``."""
    network = () if "--network" in options else ("--network", "none")
    return [*runtime_command(runtime), "run", *network, *options, *isolation_args(runtime, limits, gpus),
            *env_args(env or {}), *image.command(*args)]


def runtime_command(runtime: str) -> list[str]:
    """The runtime's command with its global options: podman takes runc where its default, crun, cannot run, on a
    hybrid cgroup layout whose v2 hierarchy holds controllers (seen on some virtual machines)."""
    if runtime != "podman" or shutil.which("runc") is None:
        return [runtime]
    try:
        controllers = Path("/sys/fs/cgroup/unified/cgroup.controllers").read_text().split()
    except OSError:
        return [runtime]
    return [runtime, "--runtime", "runc"] if controllers else [runtime]


def limits_enforceable(runtime: str) -> str | None:
    """Why the runtime could not enforce the container's limits here, or None. podman runs in this process's
    mount namespace and, finding no cgroup filesystem, would start the container without limits."""
    if runtime != "podman":
        return None  # Docker's daemon manages cgroups in its own namespace
    cgroups = Path("/sys/fs/cgroup")
    try:
        v2 = "memory" in (cgroups / "cgroup.controllers").read_text().split()
    except OSError:
        v2 = False
    if v2 or (cgroups / "memory" / "memory.limit_in_bytes").exists():
        return None
    return ("no cgroup memory controller under /sys/fs/cgroup, so podman would run the engine without its limits "
            "(an agent started with `ip netns exec` sees a /sys without cgroups: use `nsenter --net=...`)")


CLONE_NEWUSER = 0x10000000
# Where the runtime's default seccomp profile is, for podman (containers-common); Docker's is built in.
PODMAN_SECCOMP = (Path("/etc/containers/seccomp.json"), Path("/usr/share/containers/seccomp.json"))


def seccomp_args(runtime: str) -> list[str]:
    """The runtime's default seccomp profile, and no new user namespaces. Docker's default already refuses them
    to a container without CAP_SYS_ADMIN; podman's lets any process make one (and be root, with every capability,
    inside it: the way in for many kernel exploits), so its profile is given again with ``clone`` and ``unshare``
    allowed only without CLONE_NEWUSER, and ``clone3`` (whose flags a filter cannot read) answered ENOSYS, which
    makes the C library fall back to ``clone``."""
    if runtime != "podman":
        return []
    source = next((path for path in PODMAN_SECCOMP if path.exists()), None)
    if source is None:
        raise HostkitError("podman's default seccomp profile is missing (install containers-common)")
    profile = json.loads(source.read_text())
    guarded = {"clone", "clone3", "unshare"}
    for rule in profile["syscalls"]:
        if rule.get("action") == "SCMP_ACT_ALLOW" and not rule.get("args") and not rule.get("includes") \
                and not rule.get("excludes"):
            rule["names"] = [name for name in rule["names"] if name not in guarded]
    no_new_user = [{"index": 0, "value": CLONE_NEWUSER, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    profile["syscalls"] += [{"names": ["clone", "unshare"], "action": "SCMP_ACT_ALLOW", "args": no_new_user},
                            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    text = json.dumps(profile, sort_keys=True)
    path = RUN_ROOT / f"gpushare-seccomp-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}")
        partial.write_text(text)
        partial.rename(path)
    return ["--security-opt", f"seccomp={path}"]


def gpu_args(runtime: str, gpus: str | None) -> list[str]:
    """The flags that hand the container the selected GPUs: ``gpus`` "all", "0,2" or None (no GPU)."""
    if not gpus:
        return []
    if runtime == "docker":
        return ["--gpus", "all" if gpus == "all" else f'"device={gpus}"']
    return [arg for index in gpus.split(",") for arg in ("--device", f"nvidia.com/gpu={index.strip()}")]


def isolation_args(runtime: str, limits: Limits, gpus: str | None) -> list[str]:
    """Everything that confines a container of ours, the serving one and the preparing ones alike."""
    args = ["--user", USER, "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *seccomp_args(runtime),
            "--read-only", *(["--read-only-tmpfs=false"] if runtime == "podman" else []),  # no /run, /var/tmp
            "--tmpfs", f"{SCRATCH}:rw,nosuid,nodev,size={limits.tmpfs},mode=1777",
            "--memory", limits.memory, "--memory-swap", limits.memory, "--pids-limit", str(limits.pids),
            "--shm-size", limits.shm]
    # Open files and processes: no more than this machine allows the agent (the runtimes' defaults can be above
    # the hard limits a service runs under, and then the container cannot start).
    for name, limit, most in (("nofile", resource.RLIMIT_NOFILE, MAX_OPEN_FILES),
                              ("nproc", resource.RLIMIT_NPROC, limits.pids)):
        hard = resource.getrlimit(limit)[1]
        allowed = most if hard == resource.RLIM_INFINITY else min(hard, most)
        args += ["--ulimit", f"{name}={allowed}:{allowed}"]
    if limits.cpus:
        args += ["--cpus", f"{limits.cpus:g}"]
    return args + gpu_args(runtime, gpus)


def scratch_env(offline: bool = True) -> dict[str, str]:
    """Every cache on the tmpfs, no telemetry, and (serving) no hub."""
    return {**engine_variables(f"{SCRATCH}/cache", f"{SCRATCH}/config", offline=offline),
            "HOME": SCRATCH, "TMPDIR": SCRATCH, "VLLM_RPC_BASE_PATH": SCRATCH}


def env_args(env: dict[str, str]) -> list[str]:
    return [arg for name, value in sorted(env.items()) for arg in ("--env", f"{name}={value}")]


PROBE_MEMORY = 256 * 2**20
# Run inside a container by ``probe``: what the engine would be, as the kernel sees it.
PROBE = """
import json, os
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
try:
    open("/probe", "w")
    writable = True
except OSError:
    writable = False
import ctypes
userns = ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0
memory = None
for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
        memory = int(open(path).read())
        break
    except (OSError, ValueError):
        pass
print(json.dumps({"uid": os.getuid(), "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
                  "seccomp": status["Seccomp"].strip(), "root_writable": writable, "memory_limit": memory,
                  "interfaces": sorted(os.listdir("/sys/class/net")), "user_namespace": userns}))
"""


def probe(runtime: str, image: Image) -> tuple[bool, str, dict]:
    """Start a container as the engine's would be started (no network, no capabilities, read-only, limited)
    and ask the kernel what it got: (isolated?, what was found, the readings)."""
    if (why := limits_enforceable(runtime)) is not None:
        return False, f"not isolated: {why}", {}
    small = Limits(memory=f"{PROBE_MEMORY // 2**20}m", pids=64, tmpfs="16m", shm="16m")
    command = run_command(runtime, image, small, None, "-c", PROBE, options=("--rm",))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir())
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"the probe container did not run: {error}", {}
    if done.returncode != 0:
        return False, f"the probe container did not run: {last_line(done.stderr)}", {}
    try:
        seen = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return False, "the probe container printed nothing readable", {}
    wrong = [what for what, bad in (("it ran as root", seen.get("uid") == 0),
                                    ("it kept capabilities", int(seen.get("cap_eff", "1"), 16) != 0),
                                    ("no-new-privileges was not set", seen.get("no_new_privs") != "1"),
                                    ("no seccomp filter", seen.get("seccomp") != "2"),
                                    ("its root was writable", seen.get("root_writable")),
                                    ("it had a network", seen.get("interfaces") != ["lo"]),
                                    ("its memory was not limited", seen.get("memory_limit") != PROBE_MEMORY),
                                    ("it could make a user namespace", seen.get("user_namespace") is not False))
             if bad]
    if wrong:
        return False, "not isolated: " + ", ".join(wrong), seen
    return True, "isolated (no network, no capabilities, seccomp, read-only root, limits)", seen


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
