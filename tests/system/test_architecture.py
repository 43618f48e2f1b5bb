"""The layout's rules, checked: what production imports, no import cycles, modules a reader can hold in mind.

``make lint`` checks the import contracts in pyproject.toml with import-linter; these tests check what it
cannot: the modules a production process really loads, and cycles through imports inside functions.
"""
import json
import os
import subprocess
import sys

import grimp

from app import ROOT

PACKAGES = ("app", "jobs", "hostkit", "overlay")
MAX_LINES = 400
# Every table in one file, and the migrations (history, as they ran), may be longer.
LONG_ALLOWED = {"app/models.py"}


def test_production_processes_load_no_demo_or_test_code():
    """gunicorn and RQ import ``wsgi``; nothing under ``app.dev`` may come with it."""
    env = {**os.environ, "DATABASE_URL": "postgresql://gpushare@127.0.0.1:9/gpushare",
           "REDIS_URL": "redis://127.0.0.1:9/0", "GPUSHARE_ENV": "production",
           "SECRET_KEY": "architecture-test-secret-key-long-enough"}
    done = subprocess.run([sys.executable, "-c", "import json, sys, wsgi; print(json.dumps(sorted(m for m in "
                                                 "sys.modules if m.split('.')[0] in ('app', 'jobs', 'hostkit'))))"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "app.proxy.gateway" in loaded and "app.money.ledger" in loaded  # the app really was loaded
    assert [m for m in loaded if m == "app.dev" or m.startswith("app.dev.")] == []


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over every import, those inside
    functions included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_is_in_an_import_cycle():
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph(*PACKAGES, cache_dir=None, exclude_type_checking_imports=True)
    finally:
        sys.path.remove(str(ROOT))
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for importer, imported in [("a.x", "a.y"), ("a.y", "a.z"), ("a.z", "a.x"), ("a.z", "a.w")]:
        graph.add_import(importer=importer, imported=imported)
    assert _cycles(graph) == [["a.x", "a.y", "a.z"]]


def test_no_module_is_longer_than_a_reader_can_hold():
    long = []
    for package in (*PACKAGES, "tests"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES and relative not in LONG_ALLOWED:
                long.append(f"{relative}: {lines} lines")
    assert long == []
