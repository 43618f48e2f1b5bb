"""Verification: how well the checks tell honest hosts from cheaters, what they cost, how fast a cheater stops
getting traffic.

Runs the real path on this machine: embedded PostgreSQL and Redis, the app in process, real vLLM CPU engines
serving SmolLM2-135M-Instruct (the float32 reference; an honest bf16 host; 8-bit and 4-bit copies; a smaller
model with the same tokenizer) and two dishonest proxies in front of the honest engine (one replays cached answers,
one cuts answers short). SmolLM2 is calibrated against the honest host with the production default number of
canaries; then every variant gets ``--checks`` canaries on the ordinary request path, each scored by the
reference with the production thresholds and rules. Prints, per variant:

- the share of checks that failed (the detection rate; for the honest host, the false-positive rate) with its
  95% interval;
- the tokens one check spends (the canary on the host and the reference's pass) and the tokens spent before the
  host was quarantined;
- the probability of quarantine within checks worth at most 1,000 tokens (quarantine needs two failed checks
  among the last three: computed for that rule from the measured failure rate);
- for the 8-bit copy, the AUC of single greedy checks and of the slow test (the mean of ``VERIFY_WINDOW`` greedy
  checks) against the honest host's;

then what verification costs against the tokens a host serves at the demo's traffic rate (the honest host's own
benchmarked throughput at full concurrency), and, over ``--trials`` real runs of the scheduler and the jobs with
their production settings, the time from a verified host's first cheating answer to its quarantine.

    .venv/bin/python bench/bench_verification.py [--checks 200] [--trials 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import CPU_REPORT  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TOKEN_BUDGET = 1000
VARIANTS = ("honest", "int8", "int4", "pruned", "replay", "truncate")


def cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpushare-bench"


def build_models() -> dict[str, Path]:
    from hostkit.local.engine import engine_python, ensure_model

    python = engine_python()
    smollm2 = ensure_model("smollm2", cache() / "models", python=python, data_dir=cache())
    folders = {"reference": smollm2, "honest": smollm2}
    for kind in ("int8", "int4", "pruned"):
        target = cache() / "models" / f"smollm2-{kind}"
        subprocess.run([str(python), str(ROOT / "tests" / "support" / "model_variants.py"), kind, str(smollm2),
                        str(target)], check=True, capture_output=True,
                       env={k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")})
        folders[kind] = target
    return folders


def start_engines(folders: dict[str, Path], data: Path) -> dict:
    from hostkit.local.engine import Engine, engine_python

    python = engine_python()
    kv = 128 * 1024 * 1024
    engines = {name: Engine(python, folder, MODEL, data_dir=data / name, max_model_len=2048,
                            kv_cache_bytes=2 * kv if name == "reference" else kv,
                            dtype="float32" if name == "reference" else None)
               for name, folder in folders.items()}
    threads = [threading.Thread(target=engine.start) for engine in engines.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    dead = [name for name, engine in engines.items() if not engine.alive()]
    if dead:
        raise SystemExit(f"engines did not start: {dead}")
    return engines


def wilson(failures: int, total: int) -> tuple[float, float]:
    """The 95% Wilson interval of a rate."""
    if not total:
        return (0.0, 1.0)
    z, p = 1.96, failures / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def caught_within(p: float, checks: int) -> float:
    """P(two of the last three checks failed, at some point within ``checks`` checks), each failing with ``p``."""
    states = {(): 1.0}  # the last two outcomes (True: failed) -> probability, not yet quarantined
    caught = 0.0
    for _ in range(checks):
        after: dict = {}
        for last, weight in states.items():
            for failed, chance in ((True, p), (False, 1 - p)):
                window = (*last, failed)[-3:]
                if sum(window) >= 2:
                    caught += weight * chance
                else:
                    key = window[-2:]
                    after[key] = after.get(key, 0.0) + weight * chance
        states = after
    return caught


def auc(positives: list[float], negatives: list[float]) -> float | None:
    if not positives or not negatives:
        return None
    ranked = sorted([(v, 1) for v in positives] + [(v, 0) for v in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        rank_sum += sum(label for _, label in ranked[i:j]) * (i + j + 1) / 2
        i = j
    n = len(positives)
    return (rank_sum - n * (n + 1) / 2) / (n * len(negatives))


def windows(values: list[float], size: int, count: int, rng: random.Random) -> list[float]:
    """Means of ``count`` random windows of ``size`` checks (the slow test's statistic)."""
    return [sum(rng.sample(values, size)) / size for _ in range(count)] if len(values) >= size else []


def sliding(values: list[float], size: int) -> list[float]:
    return [sum(values[i:i + size]) / size for i in range(len(values) - size + 1)]


def run_checks(app, host_id: int, count: int, parallel: int) -> list[dict]:
    """``count`` canaries to the host on the ordinary path, each checked against the reference."""
    from app.extensions import db
    from app.models import Host
    from app.proxy.errors import ApiError
    from app.trust import canaries, checks, verifier

    def one(_):
        with app.app_context():
            started = time.monotonic()
            try:
                call = verifier.send(db.session.get(Host, host_id), canaries.request(MODEL))
            except ApiError as error:
                return {"outcome": "host failed", "reason": error.message}
            row = checks.check(call.sample) if call.sample else None
            if row is None:
                return {"outcome": "unchecked"}
            found = {"outcome": row.outcome, "test": row.test, "statistic": row.statistic,
                     "threshold": row.threshold, "cost": row.cost_tokens, "tokens": row.tokens,
                     "seconds": time.monotonic() - started, "at": row.created_at}
            db.session.remove()
            return found

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, range(count)))


def served_tokens_per_second(app, host_id: int, concurrency: int = 8, requests: int = 32) -> float:
    """The demo's traffic rate: what the host serves at full load (prompt and completion tokens per second, as
    clients are billed) to requests shaped as clients' are (the canaries' own distribution)."""
    from app.extensions import db
    from app.models import Host
    from app.trust import canaries, verifier

    def one(_):
        with app.app_context():
            call = verifier.send(db.session.get(Host, host_id), canaries.request(MODEL))
            return len(call.prompt_ids or ()) + call.completion_tokens

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        served = sum(pool.map(one, range(requests)))
    return round(served / (time.monotonic() - started), 1)


def summarise(name: str, results: list[dict], quarantined_at) -> dict:
    conclusive = [r for r in results if r["outcome"] in ("passed", "failed")]
    failed = sum(r["outcome"] == "failed" for r in conclusive)
    rate = failed / len(conclusive) if conclusive else 0.0
    cost = sum(r["cost"] for r in conclusive) / len(conclusive) if conclusive else 0
    before = [r for r in conclusive if quarantined_at is None or r["at"] <= quarantined_at]
    low, high = wilson(failed, len(conclusive))
    return {"variant": name, "checks": len(conclusive), "failed": failed, "rate": rate, "rate_95": [low, high],
            "greedy_checks": sum(r["test"] == "greedy" for r in conclusive),
            "tokens_per_check": round(cost, 1),
            "host_tokens_per_check": round(sum(r["tokens"] for r in conclusive) / max(len(conclusive), 1), 1),
            "tokens_to_quarantine": sum(r["cost"] for r in before) if quarantined_at else None,
            "caught_within_budget": caught_within(rate, int(TOKEN_BUDGET // cost)) if cost else 0.0,
            "seconds_per_check": round(sum(r["seconds"] for r in conclusive) / max(len(conclusive), 1), 2),
            "unchecked": len(results) - len(conclusive)}


def time_to_quarantine(app, engines, trials: int) -> list[float]:
    """Real runs of the scheduler and the verification jobs, at their production settings: a verified host turns
    to 4-bit weights at a random moment; seconds until it is quarantined."""
    from rq import SimpleWorker

    import jobs
    from app.extensions import db
    from app.models import Host, HostBenchmark, HostModel
    from jobs import verification
    from tests.support.cheaters import Cheater

    found = []
    with app.app_context():
        owner_id = db.session.scalar(db.select(Host.owner_id).where(Host.name == "honest"))
        model_id = db.session.scalar(db.select(Host).where(Host.name == "honest")).offers[0].model_id
        # Only the turncoat (and the reference) is checked meanwhile, as on a fleet of one.
        db.session.execute(db.text("UPDATE hosts SET enabled = false WHERE NOT reference"))
        db.session.commit()
    for trial in range(trials):
        with Cheater(engines["honest"].root_url, "honest", eos_token_id=2) as turncoat, app.app_context():
            host = Host(owner_id=owner_id, name=f"turncoat {trial}", status="approved", enabled=True, healthy=True,
                        api_base=turncoat.api_base, trust_state="verified", hardware=CPU_REPORT)
            db.session.add(host)
            db.session.flush()
            db.session.add(HostModel(host_id=host.id, model_id=model_id))
            db.session.add(HostBenchmark(host_id=host.id, model_id=model_id, gpu="no GPU", passed=True))
            db.session.commit()
            worker = SimpleWorker([jobs.queue(jobs.VERIFY_QUEUE)], connection=app.extensions["redis"])
            switch_at = time.monotonic() + random.uniform(30, 90)
            switched = None
            while True:
                verification.schedule()
                worker.work(burst=True, logging_level="WARNING")
                if switched is None and time.monotonic() >= switch_at:
                    turncoat.switch_to(engines["int4"].root_url)
                    switched = time.monotonic()
                state = db.session.get(Host, host.id, populate_existing=True).trust_state
                db.session.commit()
                if state == "quarantined":
                    found.append(time.monotonic() - switched if switched else 0.0)
                    break
                time.sleep(jobs.VERIFY_SCHEDULE_SECONDS)
            host.enabled = False
            db.session.commit()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=200, help="canaries per variant (default 200)")
    parser.add_argument("--parallel", type=int, default=4, help="canaries in flight per variant")
    parser.add_argument("--trials", type=int, default=3, help="real turncoat runs timed to quarantine")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="which of them (default: all)")
    parser.add_argument("--json", type=Path, help="write the results, every check's statistic too, here")
    args = parser.parse_args()

    from app.dev.embedded import EmbeddedServices
    from hostkit.local.engine import CPU_THREADS_VARIABLE
    from tests.support.cheaters import Cheater

    os.environ.setdefault(CPU_THREADS_VARIABLE, "1")  # seven engines share this machine's cores
    logging.getLogger("rq").setLevel(logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    data = Path(tempfile.mkdtemp(prefix="gpushare-bench-verify-"))
    services = EmbeddedServices(data / "services")
    engines = {}
    try:
        database_url, redis_url = services.start_postgres(), services.start_redis()
        print("building the models and starting the engines...", flush=True)
        engines = start_engines(build_models(), data / "engines")
        with Cheater(engines["honest"].root_url, "replay", eos_token_id=2) as replay, \
                Cheater(engines["honest"].root_url, "truncate", eos_token_id=2) as truncate:
            urls = {name: engine.root_url for name, engine in engines.items()} | {
                "replay": replay.api_base, "truncate": truncate.api_base}
            report = measure(database_url, redis_url, data, urls, engines, args)
    finally:
        for engine in engines.values():
            engine.stop()
        services.stop()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


def measure(database_url, redis_url, data: Path, urls: dict, engines: dict, args) -> dict:
    from flask_migrate import upgrade

    from app import create_app
    from app.accounts import create_user
    from app.config import normalise_database_url
    from app.dev import demo
    from app.extensions import db
    from app.models import CatalogModel, Host, HostModel
    from app.trust import calibration

    tokenizers = data / "tokenizers" / MODEL
    tokenizers.parent.mkdir(parents=True, exist_ok=True)
    tokenizers.symlink_to(engines["honest"].model_dir, target_is_directory=True)
    app = create_app({"SQLALCHEMY_DATABASE_URI": normalise_database_url(database_url), "REDIS_URL": redis_url,
                      "GPUSHARE_DATA_DIR": str(data), "TOKENIZERS_DIR": str(data / "tokenizers"),
                      "UPSTREAM_FIRST_TOKEN_TIMEOUT": 300, "UPSTREAM_CHUNK_TIMEOUT": 120})
    config = app.config
    with app.app_context():
        upgrade()
        demo.seed_models()
        owner = create_user("owner@bench.example", "benchmark-password-owner")
        model = db.session.scalar(db.select(CatalogModel).where(CatalogModel.hf_id == MODEL))
        hosts = {}
        for name, url in urls.items():
            host = Host(owner_id=owner.id, name=name, status="approved", enabled=True, healthy=True, api_base=url,
                        trust_state="verified", reference=name == "reference", hardware=CPU_REPORT)
            db.session.add(host)
            db.session.flush()
            db.session.add(HostModel(host_id=host.id, model_id=model.id))
            hosts[name] = host.id
        db.session.commit()
        print(f"calibrating against the honest host ({config['VERIFY_CALIBRATION_CHECKS']} canaries)...", flush=True)
        found = calibration.calibrate(hosts["honest"])
        thresholds = found.thresholds
        throughput = served_tokens_per_second(app, hosts["honest"])
        db.session.execute(db.text("UPDATE hosts SET enabled = false WHERE name = 'honest'"))
        db.session.commit()

    results = {}
    variants = [name for name in VARIANTS if name in args.variants.split(",")]
    for name in variants:
        print(f"{args.checks} canaries to the {name} host...", flush=True)
        results[name] = run_checks(app, hosts[name], args.checks, args.parallel)
    with app.app_context():
        states = {name: db.session.get(Host, hosts[name]) for name in variants}
        quarantined = {name: host.trust_changed_at if host.trust_state == "quarantined" else None
                       for name, host in states.items()}
        window = config["VERIFY_WINDOW"]
        rng = random.Random(0)
        greedy = {name: [r["statistic"] for r in rows if r.get("test") == "greedy"] for name, rows in results.items()}
        sampled = {name: [r["statistic"] for r in rows if r.get("test") == "sampled"]
                   for name, rows in results.items()}
        summaries = [summarise(name, results[name], quarantined[name]) for name in variants]
        for summary in summaries:
            summary["quarantined"] = quarantined[summary["variant"]] is not None
            summary["reason"] = states[summary["variant"]].trust_reason
        int8 = {"greedy_auc": auc(greedy.get("int8", []), greedy.get("honest", [])),
                "sampled_auc": auc(sampled.get("int8", []), sampled.get("honest", [])),
                "window_auc": auc(windows(greedy.get("int8", []), window, 500, rng),
                                  windows(greedy.get("honest", []), window, 500, rng)),
                "window": window, "window_threshold": thresholds.get("window", {}).get("threshold"),
                # The slow test as it runs: the mean of each run of the last VERIFY_WINDOW greedy checks.
                "honest_sliding_max": max(sliding(greedy.get("honest", []), window), default=None),
                "int8_sliding_min": min(sliding(greedy.get("int8", []), window), default=None)}
        honest = next((s for s in summaries if s["variant"] == "honest"), summaries[0])
    print("timing turncoats against the real scheduler...", flush=True)
    times = time_to_quarantine(app, engines, args.trials)
    # An honest host's canary: its prompt and answer on the host, and both again in the reference's pass. A sampled
    # client answer: the reference's pass over that request's tokens, for the sampled share of what is served.
    canary_tokens_per_second = honest["tokens_per_check"] / config["VERIFY_CANARY_SECONDS"]
    sampled_share = config["VERIFY_SAMPLE_BPS"] / 10_000
    return {"summaries": summaries, "int8": int8, "thresholds": thresholds, "results": results,
            "demo_tokens_per_second": throughput,
            "cost_share": canary_tokens_per_second / throughput + sampled_share if throughput else None,
            "canary_seconds": config["VERIFY_CANARY_SECONDS"], "sample_share": sampled_share,
            "time_to_quarantine": times, "checks": args.checks}


def print_report(report: dict) -> None:
    print()
    print(f"{'variant':10} {'checks':>6} {'failed':>7} {'rate (95% CI)':>22} {'tok/check':>9} "
          f"{'tok to Q':>8} {'P(Q<=1000 tok)':>14} {'quarantined':>11}")
    for s in report["summaries"]:
        low, high = s["rate_95"]
        print(f"{s['variant']:10} {s['checks']:>6} {s['failed']:>7} {s['rate']:>8.3f} ({low:.3f}-{high:.3f}) "
              f"{s['tokens_per_check']:>9} {str(s['tokens_to_quarantine'] or '-'):>8} "
              f"{s['caught_within_budget']:>14.4f} {str(s['quarantined']):>11}")
    i8 = report["int8"]
    if i8["greedy_auc"] is not None:
        print(f"\n8-bit AUC: single greedy checks {i8['greedy_auc']:.3f}, single sampled checks "
              f"{(i8['sampled_auc'] or 0):.3f}, the slow test over {i8['window']} greedy checks "
              f"{(i8['window_auc'] or 0):.3f}")
    if i8["window_threshold"] is not None:
        print(f"slow test: threshold {i8['window_threshold']:.5f} nats; the honest host's highest window "
              f"{i8['honest_sliding_max'] or 0:.5f}, the 8-bit copy's lowest {i8['int8_sliding_min'] or 0:.5f}")
    share = report["cost_share"]
    print(f"cost: one canary every {report['canary_seconds']} s on average and {100 * report['sample_share']:.1f}% "
          f"of client answers re-scored, against the {report['demo_tokens_per_second']} tokens/s (prompt and "
          f"completion) the honest host serves at full load: "
          f"{100 * share:.2f}% of served tokens" if share else "cost: no throughput measured")
    times = report["time_to_quarantine"]
    if times:
        print(f"first cheating answer to quarantine: {', '.join(f'{t:.0f} s' for t in times)} "
              f"(worst {max(times):.0f} s over {len(times)} runs)")


if __name__ == "__main__":
    main()
