"""Hardware validation: does a host's throughput fit the GPU it reported?

At staging, and every ``VERIFY_BENCHMARK_HOURS`` after, the verifier sends the host bursts of requests on the
ordinary path at several concurrencies (each a fixed number of tokens: ``ignore_eos``) and measures the tokens per
second the burst got. A decode step has to read every weight once (memory bandwidth), do two operations per
weight for each sequence in the batch (compute), and pay a fixed overhead (scheduling, kernel launches): so a GPU
class's ceiling at concurrency ``c`` for a model of P parameters is ``c / (max(2P / bandwidth, 2Pc / flops) +
overhead)`` tokens per second. A host that reaches less than ``FLOOR`` of its reported GPU's ceiling at the highest
concurrency claims a GPU it does not have, and is quarantined. More than the ceiling (a quantised copy, or an
engine that is not the one reported) is recorded for the admin.
"""
from __future__ import annotations

import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flask import current_app

from ..extensions import db
from ..models import Host, HostBenchmark
from ..proxy.errors import ApiError
from . import canaries, quarantine, verifier


@dataclass(frozen=True)
class GpuClass:
    name: str
    bandwidth_gb_s: float
    tflops: float  # dense 16-bit
    overhead_s: float = 0.004  # per decode step: scheduling and kernel launches
    floor: float = 0.2  # the share of the ceiling an honest engine reaches at least


# Name patterns as NVML reports them ("NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"), most specific first.
# Where a name covers variants (an A100 with 40 or 80 GB), the slower one: the floor must not fail an honest host.
GPU_CLASSES = [
    (r"GH200", GpuClass("GH200", 4000, 989)),
    (r"B200", GpuClass("B200", 8000, 2250)),
    (r"H200", GpuClass("H200", 4800, 989)),
    (r"H100.*PCIe", GpuClass("H100 PCIe", 2000, 756)),
    (r"H100", GpuClass("H100", 3350, 989)),
    (r"H800", GpuClass("H800", 2000, 756)),
    (r"A100", GpuClass("A100", 1555, 312)),
    (r"A800", GpuClass("A800", 1555, 312)),
    (r"L40S", GpuClass("L40S", 864, 362)),
    (r"L40", GpuClass("L40", 864, 181)),
    (r"\bL4\b", GpuClass("L4", 300, 121)),
    (r"A10G", GpuClass("A10G", 600, 70)),
    (r"\bA10\b", GpuClass("A10", 600, 125)),
    (r"RTX 6000 Ada", GpuClass("RTX 6000 Ada", 960, 364)),
    (r"A6000", GpuClass("RTX A6000", 768, 155)),
    (r"RTX 5090", GpuClass("RTX 5090", 1792, 210)),
    (r"RTX 4090", GpuClass("RTX 4090", 1008, 165)),
    (r"RTX 4080", GpuClass("RTX 4080", 717, 97)),
    (r"RTX 4070", GpuClass("RTX 4070", 504, 58)),
    (r"RTX 3090", GpuClass("RTX 3090", 936, 71)),
    (r"RTX 3080", GpuClass("RTX 3080", 760, 60)),
    (r"RTX 3060", GpuClass("RTX 3060", 360, 25)),
    (r"V100", GpuClass("V100", 900, 125)),
    (r"\bT4\b", GpuClass("T4", 320, 65)),
]
# A GPU not in the table: held to a modest card's numbers. No GPU: the CPU engine (the demo and the tests), whose
# speed varies most of all.
UNKNOWN_GPU = GpuClass("an unlisted GPU", 300, 30)
CPU = GpuClass("CPU (no GPU)", 20, 1, overhead_s=0.02, floor=0.01)
CONCURRENCIES = (1, 4, 8)
TOKENS_PER_REQUEST = 16
BENCHMARK_TIMEOUT = 300


def gpu_class(hardware: dict) -> tuple[str, GpuClass]:
    """The GPU the host reported in its ``hostkit check`` (its fastest one) and the class it is held to."""
    report = hardware if isinstance(hardware, dict) else {}
    checks = report.get("checks") if isinstance(report.get("checks"), list) else []
    gpus = next((c.get("data", {}).get("gpus") for c in checks if isinstance(c, dict) and c.get("name") == "gpu"
                 and isinstance(c.get("data"), dict)), None)
    names = [str(g.get("name"))[:100] for g in gpus or [] if isinstance(g, dict) and g.get("name")]
    if not names:
        return "no GPU", CPU
    found = [(name, cls) for name in names for pattern, cls in GPU_CLASSES if re.search(pattern, name, re.I)]
    if not found:
        return names[0], UNKNOWN_GPU
    return max(found, key=lambda pair: pair[1].bandwidth_gb_s)


def ceiling(cls: GpuClass, parameters_millions: int, concurrency: int) -> float:
    """The most tokens per second a GPU of ``cls`` can generate for a model of that size at that concurrency."""
    weights = 2 * parameters_millions * 1e6  # bytes at 16 bits
    memory = weights / (cls.bandwidth_gb_s * 1e9)
    compute = 2 * parameters_millions * 1e6 * concurrency / (cls.tflops * 1e12)
    return concurrency / (max(memory, compute) + cls.overhead_s)


def expected(cls: GpuClass, parameters_millions: int, concurrency: int) -> tuple[float, float]:
    top = ceiling(cls, parameters_millions, concurrency)
    return cls.floor * top, top


def benchmark(host_id: int) -> HostBenchmark | None:
    """Run the benchmark on a host, keep the result, and quarantine a host whose numbers don't add up. None when
    the host serves no chat model."""
    host = db.session.get(Host, host_id)
    model = verifier.chat_model(host) if host is not None else None
    if model is None or not host.api_base:
        db.session.rollback()
        return None
    reported, cls = gpu_class(host.hardware)
    verifier.key()  # made once, before the canaries go out side by side
    hf_id, size = model.hf_id, model.parameters_millions
    app = current_app._get_current_object()
    rng = random.Random()
    results, error = [], None
    for concurrency in CONCURRENCIES:
        bodies = [{**canaries.request(hf_id, rng, greedy=True), "max_tokens": TOKENS_PER_REQUEST,
                   "ignore_eos": True, "stream": False} for _ in range(concurrency)]
        bodies = [{k: v for k, v in body.items() if k != "stream_options"} for body in bodies]

        def one(body: dict) -> int:
            with app.app_context():
                return verifier.send(db.session.get(Host, host_id), body).completion_tokens

        started = time.monotonic()
        try:
            with ThreadPoolExecutor(concurrency) as pool:
                generated = sum(pool.map(one, bodies))
        except ApiError as failure:
            error = f"the host failed the benchmark at concurrency {concurrency}: {failure.message}"
            break
        seconds = time.monotonic() - started
        low, high = expected(cls, size, concurrency)
        results.append({"concurrency": concurrency, "tokens_per_second": round(generated / seconds, 1),
                        "expected_min": round(low, 1), "expected_max": round(high, 1)})
    passed, reason = _verdict(results, error, reported, cls)
    row = HostBenchmark(host_id=host_id, model_id=model.id, gpu=reported, passed=passed, reason=reason,
                        results=results)
    db.session.add(row)
    db.session.commit()
    if not passed and error is None:
        quarantine(host_id, f"hardware: {reason}", benchmark=row.id)
    return row


def _verdict(results: list[dict], error: str | None, reported: str, cls: GpuClass) -> tuple[bool, str]:
    if error is not None:
        return False, error
    top = results[-1]
    if top["tokens_per_second"] < top["expected_min"]:
        return False, (f"{top['tokens_per_second']:g} tokens/s at concurrency {top['concurrency']}, below the "
                       f"{top['expected_min']:g} that {reported} ({cls.name}) reaches at least")
    if top["tokens_per_second"] > top["expected_max"]:
        return True, (f"{top['tokens_per_second']:g} tokens/s at concurrency {top['concurrency']}: faster than "
                      f"{cls.name} can serve this model at 16 bits (quantised weights, or another engine?)")
    return True, f"fits {reported} ({cls.name})"
