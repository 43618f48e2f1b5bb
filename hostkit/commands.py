"""``hostkit status``, ``models``, ``up``, ``down`` and ``schedule``: a registered host's everyday commands.

Each talks to the router with this machine's host token; the agent picks the
change up at its next heartbeat.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hostkit.client import DEFAULT_STATE_DIR, HostkitError, Router


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"hostkit {prog}", description=description)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    return parser


def _run(command, prog: str, argv) -> int:
    try:
        return command(argv) or 0
    except HostkitError as error:
        print(f"hostkit {prog}: {error}", file=sys.stderr)
        return 1


def _serving(host: dict) -> str:
    """Whether the router sends this host requests now, and if not, the first reason why: the router's own answer."""
    if not host["serving"]:
        return f"not serving: {host['reason']['message']}"
    degraded = (host.get("trust") or {}).get("state") == "degraded"
    return "serving as a fallback (its reputation is degraded)" if degraded else "serving"


def _describe(host: dict) -> str:
    beat = host.get("heartbeat") or {}
    lines = [
        f"{host['name']}: {host['status']}, {_serving(host)}",
        f"  peer id:    {host['peer_id']}",
        f"  overlay:    {host['overlay_address'] or 'none yet (assigned at approval)'}",
        f"  dashboard:  {'enabled' if host['enabled'] else 'disabled'}; "
        f"hostkit: {'up' if host['available'] else 'down'}",
        f"  schedule:   {host['schedule'].replace(chr(10), '; ') or 'always'} ({host['timezone']})"
        + ("" if host["in_schedule"] else ", outside its windows now"),
        f"  models:     {', '.join(host['models']) or 'none: choose one with `hostkit models --enable ID`'}",
        f"  engine:     {beat.get('engine', 'no heartbeat yet')}"
        + (f", {beat['running']} running, {beat['queue_depth']} queued" if "running" in beat else "")
        + (f", {beat['tokens_per_second']} tokens/s" if "tokens_per_second" in beat else ""),
        f"  heartbeat:  {host.get('last_heartbeat_at') or 'never'}",
    ]
    return "\n".join(lines)


def status(argv) -> int:
    parser = _parser("status", "What the router knows of this host.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    host = Router(args.state_dir).me()
    print(json.dumps(host, indent=2) if args.json else _describe(host))


def models(argv) -> int:
    parser = _parser("models", "The catalog models this host can offer; enable or disable one.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--enable", metavar="MODEL", help="offer this model (a catalog id, e.g. meta-llama/...)")
    group.add_argument("--disable", metavar="MODEL", help="stop offering this model")
    parser.add_argument("--all", action="store_true", help="list models too large for this GPU as well")
    args = parser.parse_args(argv)
    router = Router(args.state_dir)
    if args.enable or args.disable:
        router.call("POST", "/models", {"model": args.enable or args.disable, "enabled": bool(args.enable)})
        print(f"{'Offering' if args.enable else 'No longer offering'} {args.enable or args.disable}; "
              "the agent picks it up at its next heartbeat.")
        return 0
    answer = router.call("GET", "/models")
    vram = answer["vram_mib"]
    memory = "no GPU" if vram == 0 else f"{vram} MiB of GPU memory" if vram else "GPU unknown"
    print(f"Models for this host ({memory}):")
    for model in answer["models"]:
        if not model["fits"] and not args.all:
            continue
        mark = "*" if model["offered"] else " "
        note = "" if model["fits"] else f"  (needs {model['min_vram_mib']} MiB)"
        print(f" {mark} {model['id']}{note}")
    print("* offered. Enable one with `hostkit models --enable ID`.")


def _wait_for_engine(router: Router, want: set[str], timeout: float) -> dict:
    deadline, shown = time.monotonic() + timeout, None
    while True:
        host = router.me()
        state = (host.get("heartbeat") or {}).get("engine", "no heartbeat")
        if state != shown:
            print(f"  engine: {state}", flush=True)
            shown = state
        if state in want:
            return host
        if time.monotonic() > deadline:
            raise HostkitError(f"the engine is still {state} after {timeout:.0f}s; is `hostkit agent` running?")
        time.sleep(1)


def _set_available(argv, prog: str, description: str, available: bool, wait_flag: tuple[str, str]):
    parser = _parser(prog, description)
    parser.add_argument(wait_flag[0], action="store_true", help=wait_flag[1])
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    router = Router(args.state_dir)
    return args, router, router.call("POST", "/availability", {"available": available})["host"]


def up(argv) -> int:
    args, router, host = _set_available(argv, "up", "Take requests again (the agent starts the engine).", True,
                                        ("--wait", "wait until the engine runs"))
    print(f"{host['name']} is up: the router sends it requests once its engine passes a health check.")
    if args.wait:
        _wait_for_engine(router, {"running"}, args.timeout)


def down(argv) -> int:
    args, router, host = _set_available(
        argv, "down", "Stop taking requests; those in flight finish, then the engine stops.", False,
        ("--no-wait", "return at once instead of waiting for the drain"))
    print(f"{host['name']} is down: the router sends it no new requests.")
    if not args.no_wait and (host.get("heartbeat") or {}).get("engine") in ("running", "starting", "draining"):
        print("Waiting for requests in flight to finish...", flush=True)
        _wait_for_engine(router, {"stopped", "failed"}, args.timeout)
        print("Drained; the engine is stopped.")


def schedule(argv) -> int:
    parser = _parser("schedule", "When this host serves: weekly windows in its time zone (none: always).")
    parser.add_argument("action", nargs="?", choices=("show", "set", "clear"), default="show")
    parser.add_argument("windows", nargs="*", help='e.g. "mon-fri 22:00-08:00" "sat,sun 00:00-24:00"')
    parser.add_argument("--timezone", help="e.g. Europe/Berlin (default: keep the current one)")
    args = parser.parse_args(argv)
    router = Router(args.state_dir)
    if args.action == "set" and not args.windows:
        raise HostkitError('give at least one window, e.g. hostkit schedule set "mon-fri 22:00-08:00"')
    if args.action != "set" and args.windows:
        raise HostkitError(f"`hostkit schedule {args.action}` takes no windows")
    if args.action == "show":
        host = router.me()
    else:
        body = {"schedule": "\n".join(args.windows) if args.action == "set" else ""}
        if args.timezone:
            body["timezone"] = args.timezone
        host = router.call("PUT", "/schedule", body)["host"]
    windows = host["schedule"] or "always (no windows)"
    print(f"Schedule ({host['timezone']}):\n  " + windows.replace("\n", "\n  "))
    if not host["in_schedule"]:
        print("Outside its windows now: not serving.")
    else:
        print("Inside its windows now; " + ("serving." if host["serving"] else _serving(host) + "."))


COMMANDS = {"status": status, "models": models, "up": up, "down": down, "schedule": schedule}


def main(name: str, argv) -> int:
    return _run(COMMANDS[name], name, argv)
