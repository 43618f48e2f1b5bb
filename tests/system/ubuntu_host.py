"""An Ubuntu host for the playbook: a debootstrapped root in a network namespace, reached over SSH through WireGuard."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from app import ROOT

from ..support import ubuntu_root

BIN = Path(sys.executable).parent


PLAYBOOK = ROOT / "ansible" / "site.yml"


SETUP_HOST = ROOT / "scripts" / "setup-host.sh"


WHEELS = "/srv/wheels"  # inside the root


RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def say(message: str) -> None:
    print(f"[test_ansible] {message}", flush=True)


def run(argv, *, check=True, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def tool_env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1"}


def setup_host_ansible_core() -> str:
    """The ansible-core release setup-host.sh installs when the machine has none."""
    return re.search(r"^ANSIBLE_CORE_VERSION=\$\{ANSIBLE_CORE_VERSION:-([^}]+)\}$", SETUP_HOST.read_text(), re.M)[1]


def free_subnet() -> int:
    """A third octet n such that neither 10.231.n.0/30 (underlay) nor 10.232.n.0/24 (overlay) is in use here."""
    used = run(["ip", "-o", "addr"]).stdout + run(["ip", "route"]).stdout
    start = os.getpid() % 200 + 20
    for n in [*range(start, 250), *range(20, start)]:
        if f"10.231.{n}." not in used and f"10.232.{n}." not in used:
            return n
    raise RuntimeError("no free 10.231.n.0/30 and 10.232.n.0/24 pair for the test overlay")


def wait_for(predicate, what: str, timeout: float = 30, process: subprocess.Popen | None = None,
             log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.1)
    detail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s{': ' + detail if detail else ''}")


class UbuntuHost:
    """The Ubuntu root served by sshd in a namespace, reachable only through WireGuard."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.n = free_subnet()
        tag = os.getpid() % 10000
        self.netns = f"gsa-{os.getpid()}"
        self.veth, self.veth_peer = f"gsa{tag}v", f"gsa{tag}p"
        self.wg_here, self.wg_host = f"gsa{tag}r", f"gsa{tag}h"
        self.underlay_here, self.underlay_host = f"10.231.{self.n}.1", f"10.231.{self.n}.2"
        self.overlay_here, self.overlay_host = f"10.232.{self.n}.1", f"10.232.{self.n}.2"
        self.root = tmp / "root"
        self.key = tmp / "id_ed25519"
        self.control_dir = tmp / "ssh-control"
        # A snapshot, so that edits to hostkit/ while the test runs cannot look like a playbook that never settles.
        self.hostkit_source = tmp / "hostkit"
        self.processes: list[subprocess.Popen] = []
        self.logs: list = []
        self.mounts: list[Path] = []
        self.links: list[str] = []
        self.netns_made = False

    def ns(self, *argv) -> list:
        return ["ip", "netns", "exec", self.netns, *argv]

    def spawn(self, argv, log: Path) -> subprocess.Popen:
        out = open(log, "w")
        self.logs.append(out)
        process = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    # setup

    def start(self) -> None:
        started = time.monotonic()
        ubuntu_root.unpack(self.root)
        # ansible-core too, for scripts/setup-host.sh run on the host itself.
        ubuntu_root.offline_wheels(self.root / WHEELS.lstrip("/"), (f"ansible-core=={setup_host_ansible_core()}",))
        shutil.copytree(ROOT / "hostkit", self.hostkit_source,
                        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
        say(f"root ready in {time.monotonic() - started:.0f}s")
        self.underlay()
        self.overlay()
        self.sshd()
        say(f"host up at {self.overlay_host} (netns {self.netns}) after {time.monotonic() - started:.0f}s")

    def underlay(self) -> None:
        run(["ip", "netns", "add", self.netns])
        self.netns_made = True
        run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.veth_peer])
        self.links.append(self.veth)
        run(["ip", "link", "set", self.veth_peer, "netns", self.netns])
        run(["ip", "addr", "add", f"{self.underlay_here}/30", "dev", self.veth])
        run(["ip", "link", "set", self.veth, "up"])
        run(self.ns("ip", "addr", "add", f"{self.underlay_host}/30", "dev", self.veth_peer))
        run(self.ns("ip", "link", "set", self.veth_peer, "up"))
        run(self.ns("ip", "link", "set", "lo", "up"))

    def overlay(self) -> None:
        keys = {}
        for side in ("here", "host"):
            private = run(["wg", "genkey"]).stdout.strip()
            path = self.tmp / f"wg-{side}.key"
            path.touch(mode=0o600)
            path.write_text(private + "\n")
            keys[side] = (path, run(["wg", "pubkey"], input=private).stdout.strip())
        for side, interface, wrap in (("here", self.wg_here, list), ("host", self.wg_host, lambda a: self.ns(*a))):
            socket_path = Path(f"/var/run/wireguard/{interface}.sock")
            process = self.spawn(wrap(["wireguard-go", "-f", interface]), self.tmp / f"wireguard-go-{side}.log")
            wait_for(socket_path.exists, f"wireguard-go {interface}", process=process,
                     log=self.tmp / f"wireguard-go-{side}.log")
        run(["wg", "set", self.wg_here, "private-key", keys["here"][0], "peer", keys["host"][1],
             "allowed-ips", f"{self.overlay_host}/32", "endpoint", f"{self.underlay_host}:51820"])
        run(self.ns("wg", "set", self.wg_host, "private-key", keys["host"][0], "listen-port", "51820",
                    "peer", keys["here"][1], "allowed-ips", f"{self.overlay_here}/32"))
        run(["ip", "addr", "add", f"{self.overlay_here}/24", "dev", self.wg_here])
        run(["ip", "link", "set", self.wg_here, "up"])
        run(self.ns("ip", "addr", "add", f"{self.overlay_host}/24", "dev", self.wg_host))
        run(self.ns("ip", "link", "set", self.wg_host, "up"))

    def mount(self, argv: list, point: Path) -> None:
        run(["mount", *argv, point])
        self.mounts.append(point)

    def sshd(self) -> None:
        root = self.root
        self.mount(["-t", "proc", "proc"], root / "proc")
        self.mount(["-t", "sysfs", "-o", "ro", "sysfs"], root / "sys")
        self.mount(["-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts"], root / "dev/pts")
        (root / "run/sshd").mkdir(mode=0o755, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpushare-test", "-f", self.key])
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(self.key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        run(["chroot", root, "ssh-keygen", "-A"])
        (root / "etc/ssh/sshd_config_test").write_text(
            f"ListenAddress {self.overlay_host}\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nPidFile /run/sshd-test.pid\n"
            "Subsystem sftp /usr/lib/openssh/sftp-server\n")
        log = self.tmp / "sshd.log"
        process = self.spawn(self.ns("chroot", root, "/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/sshd_config_test"),
                             log)
        wait_for(self.port_open, f"sshd on {self.overlay_host}:22 through WireGuard", process=process, log=log)

    def port_open(self) -> bool:
        try:
            with socket.create_connection((self.overlay_host, 22), timeout=1) as conn:
                return conn.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    # use

    def chroot(self, argv: list, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run ``argv`` on the host itself (in its namespace and root), with only ``env`` in its environment."""
        plain = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                 "LANG": "C.UTF-8"}
        return run(self.ns("chroot", self.root, "env", "-i", *[f"{k}={v}" for k, v in {**plain, **env}.items()],
                           *argv), check=False, timeout=timeout)

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return run(["ssh", "-i", self.key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{self.overlay_host}", command],
                   check=False, timeout=timeout)

    def playbook(self, extra_vars: dict | None = None, timeout: float = 900) -> tuple[subprocess.CompletedProcess,
                                                                                    dict]:
        """Run ansible/site.yml against the host; returns the result and its recap for the host."""
        inventory = self.tmp / "inventory.yml"
        host_vars = {
            "ansible_host": self.overlay_host,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "ansible_python_interpreter": "/usr/bin/python3",
            "gpushare_gpu": False,
            "hostkit_source_dir": str(self.hostkit_source),
            "hostkit_pip_args": f"--no-index --find-links {WHEELS}",
        }
        inventory.write_text(yaml.safe_dump({"gpushare_hosts": {"hosts": {"noble": host_vars}}}))
        env = {**tool_env(), "ANSIBLE_HOME": str(self.tmp / "ansible-home"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_RETRY_FILES_ENABLED": "false", "ANSIBLE_PIPELINING": "true",
               # Ansible's own ControlPersist masters, in a place teardown knows (see stop_ssh_masters).
               "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir)}
        argv = [BIN / "ansible-playbook", "-i", inventory, PLAYBOOK]
        if extra_vars:
            extra = self.tmp / "extra-vars.json"
            extra.write_text(json.dumps(extra_vars))
            argv += ["-e", f"@{extra}"]
        started = time.monotonic()
        result = run(argv, check=False, timeout=timeout, cwd=ROOT, env=env)
        say(f"ansible-playbook exited {result.returncode} after {time.monotonic() - started:.0f}s")
        recaps = {m[1]: dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()[1:])))
                  for m in RECAP.finditer(result.stdout)}
        assert "noble" in recaps, result.stdout[-4000:] + result.stderr[-4000:]
        return result, recaps["noble"]

    # teardown

    def stop(self) -> None:
        errors = []

        def attempt(what, fn, *args):
            try:
                fn(*args)
            except Exception as error:  # noqa: BLE001 - teardown goes on and reports everything at the end
                errors.append(f"{what}: {error}")

        attempt("stop Ansible's ssh masters", self.stop_ssh_masters)
        attempt("stop the host's processes", self.kill_host_processes)
        for process in reversed(self.processes):
            attempt(f"stop {process.args[0]}", self.terminate, process)
        for point in reversed(self.mounts):
            attempt(f"unmount {point}", run, ["umount", point])
        for link in self.links:
            attempt(f"delete {link}", lambda name: run(["ip", "link", "del", name], check=False), link)
        if self.netns_made:
            attempt(f"delete netns {self.netns}", run, ["ip", "netns", "del", self.netns])
        for out in self.logs:
            out.close()
        attempt(f"remove {self.root}", ubuntu_root.remove, self.root)
        if errors:
            raise RuntimeError("teardown: " + "; ".join(errors))

    def stop_ssh_masters(self) -> None:
        if self.control_dir.exists():
            for control in self.control_dir.iterdir():
                run(["ssh", "-o", f"ControlPath={control}", "-O", "exit", self.overlay_host], check=False)

    def kill_host_processes(self) -> None:
        """Everything left in the namespace or chrooted into the root: sshd's sessions above all."""
        pids = set()
        if self.netns_made:
            pids |= {int(p) for p in run(["ip", "netns", "pids", self.netns], check=False).stdout.split()}
        root = str(self.root.resolve())
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "root") == root:
                        pids.add(int(entry.name))
                except OSError:
                    pass
        ours = {p.pid for p in self.processes}
        for pid in pids - ours:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @staticmethod
    def terminate(process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
