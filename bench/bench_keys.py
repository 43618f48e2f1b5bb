"""API key checks on the request path: how long ``/v1/models`` takes with a cached and an uncached key.

Runs against the embedded PostgreSQL and Redis in a temporary directory and
prints requests per second and latency percentiles. Usage:

    .venv/bin/python bench/bench_keys.py [--requests 2000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import catalog, create_app  # noqa: E402
from app.accounts import api_keys, tokens
from app.dev.embedded import EmbeddedServices  # noqa: E402
from app.extensions import db, redis_client  # noqa: E402


def timed(client, secret: str, count: int, *, flush_cache: bool) -> list[float]:
    headers = {"Authorization": f"Bearer {secret}"}
    samples = []
    for _ in range(count):
        if flush_cache:
            redis_client.delete(f"apikey:{tokens.hash_secret(secret)}")
        start = time.perf_counter()
        response = client.get("/v1/models", headers=headers)
        samples.append(time.perf_counter() - start)
        assert response.status_code == 200, response.get_data(as_text=True)
    return samples


def report(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    pct = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000  # noqa: E731
    print(f"{name:28s} {len(samples) / sum(samples):8.0f} req/s   p50 {pct(.50):6.2f} ms   "
          f"p95 {pct(.95):6.2f} ms   p99 {pct(.99):6.2f} ms   mean {statistics.mean(samples) * 1000:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        services = EmbeddedServices(Path(data_dir))
        try:
            os.environ.update(DATABASE_URL=services.start_postgres(), REDIS_URL=services.start_redis())
            app = create_app({"GPUSHARE_DATA_DIR": data_dir})
            with app.app_context():
                from flask_migrate import upgrade
                upgrade()
                catalog.seed()
                from app.accounts import create_user
                user = create_user("bench@example.com", "benchmark-password")
                _, secret = api_keys.create_key(user, "bench")
                client = app.test_client()
                timed(client, secret, 50, flush_cache=False)  # warm up
                print(f"/v1/models, {args.requests} requests, one process (Flask test client, no network)")
                report("cached key (Redis hit)", timed(client, secret, args.requests, flush_cache=False))
                report("uncached key (PostgreSQL)", timed(client, secret, args.requests // 4, flush_cache=True))
                db.engine.dispose()
        finally:
            services.stop()

if __name__ == "__main__":
    main()
