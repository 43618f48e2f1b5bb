"""A real Ubuntu 24.04 (noble) root for the playbook's tests, made with debootstrap and cached as a tarball.

The root holds everything the playbook's apt tasks ask for, so that a run
inside a network namespace with no route out finds nothing to download. The
first build takes a minute or two (it downloads about 60 MB from the Ubuntu
archive); later ones unpack ``/var/cache/gpushare-tests/ubuntu-noble-<key>.tar.gz``,
where the key is a hash of everything that goes into the root.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from app import ROOT

CACHE_DIR = Path("/var/cache/gpushare-tests")
SUITE = "noble"
MIRRORS = ("http://archive.ubuntu.com/ubuntu", "http://deb.debian.org/ubuntu")
# Bookworm's debootstrap has no script for noble; gutsy's is the one every later Ubuntu release links to.
SCRIPT = Path("/usr/share/debootstrap/scripts/gutsy")
# The archive's signing keys, from the noble release pocket, checked against this hash before use.
KEYRING_DEB = "pool/main/u/ubuntu-keyring/ubuntu-keyring_2023.11.28.1_all.deb"
KEYRING_DEB_SHA256 = "36de43b15853ccae0028e9a767613770c704833f82586f28eb262f0311adb8a8"
# What the playbook's apt tasks need (base and wireguard roles, with gpushare_gpu false), what
# Ansible needs on the target (python3-apt for the apt module and package facts, sudo for become),
# and what the test needs (sshd, systemctl to enable units offline).
PACKAGES = (
    "ca-certificates",
    "iproute2",
    "openssh-server",
    "python3",
    "python3-apt",
    "python3-venv",
    "sudo",
    "systemd",
    "systemd-sysv",
    "wireguard-tools",
)
# And the podman role's, installed with apt in the root once debootstrap is done (debootstrap's own ordering
# fails configuring podman's dependencies).
APT_PACKAGES = ("podman",)
HOSTKIT = ROOT / "hostkit"
# hostkit builds with setuptools; pip's isolated build needs it among the offline wheels too.
BUILD_REQUIREMENTS = ("setuptools>=68",)
ROOT_PYTHON = "3.12"


def say(message: str) -> None:
    print(f"[ubuntu-root] {message}", flush=True)


def cache_key() -> str:
    recipe = {"suite": SUITE, "variant": "minbase", "components": "main,universe", "packages": PACKAGES,
              "apt_packages": APT_PACKAGES,
              "keyring": KEYRING_DEB_SHA256}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def tarball() -> Path:
    return CACHE_DIR / f"ubuntu-{SUITE}-{cache_key()}.tar.gz"


@contextmanager
def _locked(name: str):
    """Serialise builds of one cache entry across concurrent test runs."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(argv: list[str], *, log: Path | None = None, timeout: float = 600) -> None:
    if log is None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        output = result.stdout + result.stderr
    else:
        with open(log, "w") as out:
            result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        output = log.read_text(errors="replace")
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise RuntimeError(f"{' '.join(argv[:3])} ... failed with exit {result.returncode}:\n{tail}")


def _download(url: str, dest: Path, sha256: str) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{url} has sha256 {digest}, expected {sha256}")
    dest.write_bytes(data)


def _debootstrap(target: Path, work: Path) -> None:
    for tool in ("debootstrap", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: `make debs` installs debootstrap (debian-packages.txt)")
    if not SCRIPT.exists():
        raise RuntimeError(f"{SCRIPT} is missing: debootstrap cannot build Ubuntu roots here")
    errors = []
    for mirror in MIRRORS:
        try:
            deb = work / "ubuntu-keyring.deb"
            _download(f"{mirror}/{KEYRING_DEB}", deb, KEYRING_DEB_SHA256)
            _run(["dpkg-deb", "-x", str(deb), str(work / "keyring")])
            keyring = work / "keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg"
            shutil.rmtree(target, ignore_errors=True)
            say(f"debootstrap {SUITE} from {mirror} ({len(PACKAGES)} packages and their dependencies)")
            _run(["debootstrap", "--variant=minbase", "--components=main,universe",
                  f"--include={','.join(PACKAGES)}", f"--keyring={keyring}",
                  SUITE, str(target), mirror, str(SCRIPT)], log=work / "debootstrap.log", timeout=1200)
            return
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
            errors.append(f"{mirror}: {error}")
            say(f"debootstrap from {mirror} failed" + ("" if mirror == MIRRORS[-1] else ", trying the next mirror"))
    raise RuntimeError("could not debootstrap Ubuntu " + SUITE + ":\n" + "\n".join(errors))


def _build(dest: Path) -> None:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE_DIR))
    try:
        root = work / "root"
        _debootstrap(root, work)
        resolv = root / "etc/resolv.conf"  # the host's, while apt downloads; then the root's own again
        link = os.readlink(resolv) if resolv.is_symlink() else None
        kept = resolv.read_bytes() if link is None and resolv.exists() else None
        resolv.unlink(missing_ok=True)
        shutil.copy2("/etc/resolv.conf", resolv)
        say(f"installing {', '.join(APT_PACKAGES)} with apt in the root")
        _run(["chroot", str(root), "sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
              f"apt-get install -y -qq --no-install-recommends {' '.join(APT_PACKAGES)}"], log=work / "apt.log")
        resolv.unlink()
        if link is not None:
            resolv.symlink_to(link)
        elif kept is not None:
            resolv.write_bytes(kept)
        # Downloaded .debs are a third of the root and nothing needs them again.
        _run(["chroot", str(root), "apt-get", "clean"])
        (root / "etc/hostname").write_text("gpushare-host\n")
        say(f"debootstrap done in {time.monotonic() - started:.0f}s; packing {dest.name}")
        partial = dest.with_name(dest.name + ".partial")
        _run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-czf", str(partial), "."], timeout=600)
        partial.rename(dest)
    finally:
        remove(work)  # refuses while debootstrap left anything mounted in there
    say(f"cached {dest} ({dest.stat().st_size >> 20} MiB) after {time.monotonic() - started:.0f}s")


def unpack(target: Path) -> Path:
    """Fill the empty directory ``target`` with the Ubuntu root, building and caching it first if need be."""
    path = tarball()
    with _locked(path.name):
        if not path.exists():
            say(f"no cached root at {path}: building it (cold path)")
            _build(path)
    started = time.monotonic()
    target.mkdir(parents=True, exist_ok=True)
    _run(["tar", "--numeric-owner", "--xattrs", "-xpzf", str(path), "-C", str(target)], timeout=600)
    say(f"unpacked {path.name} into {target} in {time.monotonic() - started:.0f}s")
    return target


def offline_wheels(target: Path, extra: tuple[str, ...] = ()) -> Path:
    """Copy into ``target`` the wheels hostkit (and ``extra`` requirements) need to install offline on the
    root's Python, downloading them once."""
    # The pins, and whatever pyproject.toml asks for that they may not cover yet.
    requirements = (HOSTKIT / "requirements.txt").read_text()
    with open(HOSTKIT / "pyproject.toml", "rb") as fh:
        wanted = (*tomllib.load(fh)["project"]["dependencies"], *BUILD_REQUIREMENTS, *extra)
    key = hashlib.sha256((requirements + repr(wanted) + ROOT_PYTHON).encode()).hexdigest()[:16]
    cached = CACHE_DIR / f"wheels-{key}"
    with _locked(cached.name):
        if not cached.exists():
            say(f"downloading wheels for Python {ROOT_PYTHON} into {cached}")
            partial = cached.with_name(cached.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            _run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                  "--only-binary=:all:", "--python-version", ROOT_PYTHON, "--implementation", "cp",
                  "--dest", str(partial), "-r", str(HOSTKIT / "requirements.txt"), *wanted], timeout=300)
            partial.rename(cached)
    shutil.copytree(cached, target, dirs_exist_ok=True)
    return target


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def remove(root: Path) -> None:
    """Delete the root, but never while anything is still mounted inside it."""
    left = mounts_under(root)
    if left:
        raise RuntimeError(f"not removing {root}: still mounted there: {', '.join(left)}")
    if root.exists():
        shutil.rmtree(root)


if __name__ == "__main__":
    # `python -m tests.support.ubuntu_root` builds the cache ahead of a test run.
    print(tarball())
    with _locked(tarball().name):
        if not tarball().exists():
            _build(tarball())
