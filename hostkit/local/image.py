"""The engine image for machines without a registry: a Debian root made here with debootstrap, with the engine
virtualenv's vLLM (CPU build) in it, that podman runs with ``--rootfs`` (read-only).

    python -m hostkit.local.image            # build it (a minute or two the first time), print its folder

The root is cached under ``/var/cache/gpushare/engine-roots/<key>``, where the key is a hash of everything that
goes into it (the Debian release and packages, the engine virtualenv's stamp), so a later build is a lookup;
roots of other keys are removed. Building needs root, debootstrap and a Debian mirror
($GPUSHARE_DEBIAN_MIRROR, default deb.debian.org).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from hostkit.local.engine import EngineError, engine_python, venv_stamp

CACHE_DIR = Path(os.environ.get("GPUSHARE_ENGINE_ROOTS", "/var/cache/gpushare/engine-roots"))
SUITE = "bookworm"  # its python3 is 3.11, the engine virtualenv's
PACKAGES = ("python3", "libnuma1", "libgomp1")  # vLLM's CPU kernels link libnuma; torch's OpenMP runtime
MIRROR = os.environ.get("GPUSHARE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
VENV_IN_ROOT = Path("opt/vllm")
PYTHON_IN_ROOT = "/opt/vllm/bin/python"
COMPLETE = ".gpushare-complete"
BUILD_VERSION = 1


def say(message: str) -> None:
    print(f"engine image: {message}", file=sys.stderr, flush=True)


def cache_key(venv: Path) -> str:
    recipe = {"suite": SUITE, "packages": PACKAGES, "venv": venv_stamp(), "version": BUILD_VERSION,
              "python": _venv_python_version(venv)}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _venv_python_version(venv: Path) -> str:
    """The engine virtualenv's Python, "3.11": the root's must be the same (the wheels are built for it)."""
    found = sorted(path.name.removeprefix("python") for path in (venv / "lib").glob("python3.*"))
    if len(found) != 1:
        raise EngineError(f"cannot tell the Python version of the engine virtualenv {venv}")
    return found[0]


@contextmanager
def _locked(cache: Path):
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def engine_root(venv: str | os.PathLike | None = None, cache: Path = CACHE_DIR) -> Path:
    """The root folder with vLLM at ``PYTHON_IN_ROOT``, built now if it is not cached. EngineError when it cannot
    be built (not root, no debootstrap, no mirror)."""
    venv = engine_python(venv).parent.parent
    key = cache_key(venv)
    target = cache / key
    if (target / COMPLETE).exists():
        return target
    with _locked(cache):
        if (target / COMPLETE).exists():
            return target
        if os.geteuid() != 0:
            raise EngineError("building the engine image needs root (debootstrap)")
        if shutil.which("debootstrap") is None:
            raise EngineError("building the engine image needs debootstrap (apt-get install debootstrap)")
        building = cache / f".building-{key}"
        shutil.rmtree(building, ignore_errors=True)
        started = time.monotonic()
        say(f"building a {SUITE} root with vLLM from {venv} (a minute or two, once)")
        _debootstrap(building)
        _add_venv(venv, building)
        (building / COMPLETE).write_text(key)
        for old in cache.iterdir():
            if old.is_dir() and old.name != key and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        building.rename(target)
        say(f"built {target} in {time.monotonic() - started:.0f}s")
        return target


def cached_root(cache: Path = CACHE_DIR) -> Path | None:
    """The newest complete root in the cache, whatever its key (``hostkit check`` probes with it), or None."""
    try:
        roots = [path for path in cache.iterdir() if (path / COMPLETE).exists()]
    except OSError:
        return None
    return max(roots, key=lambda path: path.stat().st_mtime, default=None)


def _debootstrap(root: Path) -> None:
    command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise EngineError(f"debootstrap {SUITE} from {MIRROR} failed:\n{tail}")
    shutil.rmtree(root / "var" / "cache" / "apt", ignore_errors=True)
    shutil.rmtree(root / "var" / "lib" / "apt" / "lists", ignore_errors=True)


def _add_venv(venv: Path, root: Path) -> None:
    """The virtualenv's packages under /opt/vllm, on the root's own Python (hard links where the filesystem
    allows: the root is only ever mounted read-only)."""
    version = _venv_python_version(venv)
    python = root / "usr" / "bin" / f"python{version}"
    if not python.exists():
        raise EngineError(f"the engine virtualenv is for Python {version}; {SUITE}'s root has no python{version}")
    target = root / VENV_IN_ROOT
    (target / "bin").mkdir(parents=True)
    lib = venv / "lib"
    link = subprocess.run(["cp", "-a", "--link", str(lib), str(target / "lib")], capture_output=True)
    if link.returncode != 0:
        shutil.rmtree(target / "lib", ignore_errors=True)
        subprocess.run(["cp", "-a", str(lib), str(target / "lib")], check=True, capture_output=True)
    (target / "lib64").symlink_to("lib")
    (target / "bin" / "python").symlink_to(f"/usr/bin/python{version}")
    (target / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = false\n"
                                       f"version = {version}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hostkit.local.image", description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=None, help="the engine virtualenv (default .venv-engine)")
    args = parser.parse_args(argv)
    try:
        print(engine_root(args.venv))
    except (EngineError, OSError, subprocess.SubprocessError) as error:
        print(f"hostkit.local.image: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
