"""The engine container's published port: what the relay (``hostkit.relay``) adds to a request.

A contained engine listens on a Unix socket and the agent relays its overlay port to it; a plain process engine
listens on TCP itself. This starts the same fast upstream (bench/upstream.py, 50 streamed chunks) both ways, the
real relay in a process of its own in front of the socket one, and drives each with bench/load.py at 1, 16 and
64 concurrent clients, streamed and not. Prints a table and JSON: requests/s, p50/p99 latency, time to first
byte, and the relay process's CPU milliseconds per request.

    .venv/bin/python bench/bench_relay.py [--concurrency 1 16 64] [--requests 2000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_proxy import wait_http  # noqa: E402

from hostkit.local.engine import free_port  # noqa: E402

BENCH = Path(__file__).resolve().parent


def serve_relay(port: int, socket_path: str) -> None:
    from hostkit.relay import Relay

    Relay("127.0.0.1", port, Path(socket_path)).start()
    print("relaying", flush=True)
    while True:
        time.sleep(3600)


def load(url: str, concurrency: int, requests: int, stream: bool) -> dict:
    done = subprocess.run([sys.executable, str(BENCH / "load.py"), url, "none", "bench", "--concurrency",
                           str(concurrency), "--requests", str(requests), *(["--stream"] if stream else [])],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def summary(result: dict, cpu_ms: float | None) -> dict:
    latencies = sorted(result["latencies"])
    ok = len(latencies)
    return {"rps": round(ok / result["elapsed"], 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 2) if ok else None,
            "p99_ms": round(latencies[min(ok - 1, int(ok * 0.99))] * 1000, 2) if ok else None,
            "ttfb_p50_ms": round(statistics.median(result["ttfts"]) * 1000, 2) if ok else None,
            "failed": len(result["failures"]), "relay_cpu_ms_per_request": cpu_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--serve-relay", nargs=2, metavar=("PORT", "SOCKET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_relay:
        serve_relay(int(args.serve_relay[0]), args.serve_relay[1])
        return
    with tempfile.TemporaryDirectory() as folder:
        socket_path = str(Path(folder) / "engine.sock")
        direct_port, relay_port = free_port(), free_port()
        processes = [
            subprocess.Popen([sys.executable, str(BENCH / "upstream.py"), str(direct_port)]),
            subprocess.Popen([sys.executable, str(BENCH / "upstream.py"), "0", "--unix", socket_path]),
        ]
        relay = subprocess.Popen([sys.executable, __file__, "--serve-relay", str(relay_port), socket_path])
        processes.append(relay)
        try:
            for port in (direct_port, relay_port):
                wait_http(f"http://127.0.0.1:{port}/v1/models")
            relay_cpu = psutil.Process(relay.pid)
            rows = []
            for stream in (False, True):
                for concurrency in args.concurrency:
                    for path, port in (("direct TCP", direct_port), ("relay to socket", relay_port)):
                        url = f"http://127.0.0.1:{port}/v1/chat/completions"
                        load(url, concurrency, min(100, args.requests), stream)  # warm up
                        before = sum(relay_cpu.cpu_times()[:2])
                        result = load(url, concurrency, args.requests, stream)
                        spent = sum(relay_cpu.cpu_times()[:2]) - before
                        cpu = round(spent * 1000 / max(1, len(result["latencies"])), 3) \
                            if path.startswith("relay") else None
                        rows.append({"path": path, "stream": stream, "concurrency": concurrency,
                                     **summary(result, cpu)})
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)
    print(f"{'path':16} {'stream':6} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ttfb ms':>8} "
          f"{'relay cpu ms/req':>16} {'failed':>6}")
    for row in rows:
        print(f"{row['path']:16} {str(row['stream']):6} {row['concurrency']:>4} {row['rps']:>8} {row['p50_ms']:>8} "
              f"{row['p99_ms']:>8} {row['ttfb_p50_ms']:>8} {str(row['relay_cpu_ms_per_request'] or ''):>16} "
              f"{row['failed']:>6}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
