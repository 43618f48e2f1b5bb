"""The router's overhead: the proxy against the same upstream called directly, streaming and not.

Starts embedded PostgreSQL and Redis in a temporary directory, a fast local
upstream (bench/upstream.py) registered as a healthy host, and the router as
in production (gunicorn, 2 gevent workers), then drives both with
bench/load.py at 1, 16, 64 and 256 concurrent clients. Auth, rate limits,
holds, the request journal, routing, metering and settlement are all on, and
the router meters with tiny-chat's real tokenizer and chat template (built
once with the engine virtualenv and kept under ~/.cache/gpushare-bench), as
in production. Failed requests are counted by their HTTP status. Prints a table and JSON:
requests/s, p50/p99 latency, time to first byte, and the router processes'
CPU milliseconds per request (user + system, workers and master, less what
the same processes spend when idle, measured first).

    .venv/bin/python bench/bench_proxy.py [--concurrency 1 16 64 256] [--requests 400] [--vllm]

``--vllm`` adds a run against a real vLLM host (tiny-chat, CPU) for realism.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hostkit.local.engine import free_port  # noqa: E402

MODEL = "gpushare/tiny-chat"



def wait_http(url: str, timeout: float = 60) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error still means the server is up
                return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def tokenizer_model() -> Path:
    """tiny-chat's folder (tokenizer.json and tokenizer_config.json with its chat template), built once."""
    from hostkit.local.engine import engine_python, ensure_model

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpushare-bench"
    return ensure_model("tiny-chat", cache / "models", python=engine_python(), data_dir=cache)


def prepare(data_dir: Path, upstreams: list[str]) -> tuple[str, str]:
    """Migrate, seed, and make a client with a key and credits; the router meters with tiny-chat's own
    tokenizer. Returns (database URL, API key)."""
    link = data_dir / "tokenizers" / MODEL
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(tokenizer_model(), target_is_directory=True)
    from flask_migrate import upgrade

    from app import create_app
    from app.accounts import api_keys, create_user
    from app.dev import demo
    from app.extensions import db
    from app.models import CatalogModel, Host, HostModel
    from app.money import ledger

    app = create_app({"GPUSHARE_DATA_DIR": str(data_dir)})
    with app.app_context():
        upgrade()
        demo.seed_models()
        client = create_user("bench@example.com", "benchmark-password")
        owner = create_user("host@example.com", "benchmark-password")
        ledger.grant(None, client, 90_000 * 1_000_000, memo="bench", transfer_id="bench")
        _, secret = api_keys.create_key(client, "bench")
        model = db.session.query(CatalogModel).filter_by(hf_id=MODEL).one()
        for i, api_base in enumerate(upstreams):
            host = Host(owner_id=owner.id, name=f"bench-{i}", status="approved", enabled=True, healthy=True,
                        api_base=api_base)
            db.session.add(host)
            db.session.flush()
            db.session.add(HostModel(host_id=host.id, model_id=model.id))
        db.session.execute(db.text("UPDATE users SET requests_per_minute = 10000000, tokens_per_minute = 2000000000"))
        db.session.commit()
        urls = (app.config["SQLALCHEMY_DATABASE_URI"], app.config["REDIS_URL"])
        db.engine.dispose()
    return urls, secret, app


def router_cpu(process: psutil.Process) -> float:
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def router_rss(process: psutil.Process) -> int:
    return sum(p.memory_info().rss for p in process.children(recursive=True))


def run_load(url: str, key: str, concurrency: int, requests: int, stream: bool) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), url, key, MODEL, "--concurrency",
                          str(concurrency), "--requests", str(requests)] + (["--stream"] if stream else []),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def summarise(name: str, target: str, concurrency: int, result: dict, cpu_ms: float | None) -> dict:
    lat = sorted(result["latencies"]) or [float("nan")]
    ttft = sorted(result["ttfts"]) or [float("nan")]

    def pct(values, p):
        return values[min(len(values) - 1, int(p * len(values)))] * 1000

    done = len(result["latencies"])
    kinds: dict[str, int] = {}
    for failure in result["failures"]:
        kinds[str(failure)] = kinds.get(str(failure), 0) + 1
    return {"scenario": name, "target": target, "concurrency": concurrency, "requests": done,
            "failed": len(result["failures"]), "failures": kinds, "rps": round(done / result["elapsed"], 1),
            "p50_ms": round(pct(lat, .5), 2), "p99_ms": round(pct(lat, .99), 2),
            "ttfb_p50_ms": round(pct(ttft, .5), 2),
            "router_cpu_ms_per_request": None if cpu_ms is None else round(cpu_ms, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--requests", type=int, default=400, help="per run (at least 4x the concurrency)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vllm", action="store_true", help="also measure against a real vLLM host")
    parser.add_argument("--soak", type=int, default=0, help="then send this many requests and report RSS growth")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from app.dev.embedded import EmbeddedServices

    with tempfile.TemporaryDirectory(prefix="gpushare-bench-") as tmp:
        tmp = Path(tmp)
        services = EmbeddedServices(tmp / "data")
        children: list[subprocess.Popen] = []
        engine = None
        try:
            database_url = services.start_postgres()
            redis_url = services.start_redis()
            ports = {"fast": free_port(), "gap": free_port()}
            children.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "upstream.py"), str(ports["fast"])]))
            children.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "upstream.py"), str(ports["gap"]),
                                              "--gap-ms", "20"]))
            for port in ports.values():
                wait_http(f"http://127.0.0.1:{port}/v1/models")
            os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url)
            (_, _), key, app = prepare(tmp / "data", [f"http://127.0.0.1:{ports['fast']}"])
            router_port = free_port()
            env = {**os.environ, "GPUSHARE_DATA_DIR": str(tmp / "data"), "PYTHONUNBUFFERED": "1"}
            router = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--worker-class", "gevent", "--workers", str(args.workers),
                 "--worker-connections", "2000", "--bind", f"127.0.0.1:{router_port}", "--no-control-socket",
                 "--log-level", "warning", "wsgi:app"], cwd=ROOT, env=env)
            children.append(router)
            wait_http(f"http://127.0.0.1:{router_port}/healthz")
            proc = psutil.Process(router.pid)
            idle_before, idle_started = router_cpu(proc), time.monotonic()
            time.sleep(10)
            idle_rate = (router_cpu(proc) - idle_before) / (time.monotonic() - idle_started)  # CPU s per s, idle
            print(f"router processes idle: {idle_rate * 1000:.2f} ms of CPU per second (subtracted below)")
            rows = []
            scenarios = [("non-streamed", False, "fast"), ("stream 50 chunks", True, "fast"),
                         ("stream 50 chunks, 20 ms apart", True, "gap")]
            from sqlalchemy import create_engine, text
            engine_db = create_engine(app.config["SQLALCHEMY_DATABASE_URI"])
            for name, stream, upstream in scenarios:
                with engine_db.begin() as conn:
                    conn.execute(text("UPDATE hosts SET api_base = :u"), {"u": f"http://127.0.0.1:{ports[upstream]}"})
                time.sleep(2.5)  # the routers reload their routing tables
                run_load(f"http://127.0.0.1:{router_port}/v1/chat/completions", key, 4, 40, stream)  # warm up
                for concurrency in args.concurrency:
                    count = max(args.requests, 4 * concurrency)
                    if upstream == "gap":  # a second a request: fewer of them
                        count = max(concurrency * 2, 30)
                    before, started = router_cpu(proc), time.monotonic()
                    result = run_load(f"http://127.0.0.1:{router_port}/v1/chat/completions", key, concurrency,
                                      count, stream)
                    busy = router_cpu(proc) - before - idle_rate * (time.monotonic() - started)
                    cpu_ms = busy * 1000 / max(1, len(result["latencies"]))
                    rows.append(summarise(name, "proxy", concurrency, result, cpu_ms))
                    direct = run_load(f"http://127.0.0.1:{ports[upstream]}/v1/chat/completions", key, concurrency,
                                      count, stream)
                    rows.append(summarise(name, "upstream direct", concurrency, direct, None))
                    print_row(rows[-2]), print_row(rows[-1])
            if args.vllm:
                from hostkit.local.engine import serve
                engine = serve("tiny-chat", tmp / "engine")
                with engine_db.begin() as conn:
                    conn.execute(text("UPDATE hosts SET api_base = :u"), {"u": engine.root_url})
                time.sleep(2.5)
                for concurrency in (1, 16):
                    result = run_load(f"http://127.0.0.1:{router_port}/v1/chat/completions", key, concurrency,
                                      concurrency * 4, True)
                    rows.append(summarise("vLLM tiny-chat stream", "proxy", concurrency, result, None))
                    direct = run_load(f"{engine.root_url}/v1/chat/completions", key, concurrency, concurrency * 4, True)
                    rows.append(summarise("vLLM tiny-chat stream", "upstream direct", concurrency, direct, None))
                    print_row(rows[-2]), print_row(rows[-1])
            if args.soak:
                with engine_db.begin() as conn:
                    conn.execute(text("UPDATE hosts SET api_base = :u"), {"u": f"http://127.0.0.1:{ports['fast']}"})
                time.sleep(2.5)
                run_load(f"http://127.0.0.1:{router_port}/v1/chat/completions", key, 16, 2000, False)
                start_rss = router_rss(proc)
                result = run_load(f"http://127.0.0.1:{router_port}/v1/chat/completions", key, 16, args.soak, False)
                end_rss = router_rss(proc)
                rows.append({"scenario": f"soak {args.soak} non-streamed", "target": "proxy", "concurrency": 16,
                             "requests": len(result["latencies"]), "failed": len(result["failures"]),
                             "rss_start_mb": round(start_rss / 2**20, 1), "rss_end_mb": round(end_rss / 2**20, 1),
                             "rss_growth_pct": round(100 * (end_rss - start_rss) / start_rss, 1)})
                print(json.dumps(rows[-1]))
            engine_db.dispose()
            print_table(rows)
            print(json.dumps(rows))
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2))
        finally:
            if engine is not None:
                engine.stop()
            for child in children:
                child.terminate()
            for child in children:
                child.wait(timeout=30)
            services.stop()


HEADER = f"{'scenario':31s} {'target':16s} {'conc':>4s} {'done':>6s} {'fail':>4s} {'req/s':>8s} {'p50 ms':>8s} " \
         f"{'p99 ms':>8s} {'ttfb ms':>8s} {'cpu ms/req':>10s}"


def print_row(row: dict) -> None:
    cpu = row["router_cpu_ms_per_request"]
    print(f"{row['scenario']:31s} {row['target']:16s} {row['concurrency']:4d} {row['requests']:6d} {row['failed']:4d} "
          f"{row['rps']:8.1f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['ttfb_p50_ms']:8.2f} "
          f"{'' if cpu is None else f'{cpu:10.3f}'}" + (f"  failures: {row['failures']}" if row["failed"] else ""),
          flush=True)


def print_table(rows: list[dict]) -> None:
    print()
    print(HEADER)
    for row in rows:
        if "rps" in row:
            print_row(row)


if __name__ == "__main__":
    main()
