"""The machine's store of built local models: each is built once per machine user, under
``$XDG_CACHE_HOME/gpushare/models``, and every data directory's folder of it is hard links to that build (a copy
across filesystems). A second data directory (another ``make run``, every test) builds nothing. Standard library
only."""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from hostkit.local.models import is_complete


def user_cache(env: Mapping[str, str] = os.environ) -> Path:
    """What the local engines of this machine user share: ``$XDG_CACHE_HOME/gpushare``."""
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpushare"


def model_store() -> Path:
    return user_cache() / "models"


def stored(model: str, build: Callable[[Path], None]) -> Path:
    """The store's complete folder of ``model``, made by ``build(folder)`` if there is none. One build at a time:
    the others wait for it, then use it."""
    store = model_store()
    store.mkdir(parents=True, exist_ok=True)
    folder = store / model
    with open(store / f".{model}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_complete(folder, model):
            build(folder)
    return folder


def link_tree(source: Path, target: Path) -> Path:
    """``target`` becomes a copy of ``source`` made of hard links (no engine writes to its model), in one rename:
    a folder there before (unfinished, or of an older build) is replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    placing = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(source, placing, copy_function=_link_or_copy, dirs_exist_ok=True)
        placing.chmod(source.stat().st_mode)
        shutil.rmtree(target, ignore_errors=True)
        placing.rename(target)
    finally:
        shutil.rmtree(placing, ignore_errors=True)
    return target


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another filesystem
        shutil.copy2(source, destination)
