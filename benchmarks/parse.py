"""Parse + validate throughput on one core: ``python -m benchmarks.parse``.

Realistic simulator events (2 % invalid by default), bytes in, ParseResult out,
with the shipped config (schema + rules). Prints the validator the worker uses
(msgspec fast path, then fastjsonschema for rejects), one message at a time and in
batches with the rules run over each batch (``Validator.parse_many``, what the worker
calls), against the authoritative path alone and against jsonschema's generic
validator.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import jsonschema
import orjson

from pipeline.parse import Validator
from simulator.generator import PaymentGenerator, load_scenario
from storage.config_sources import compile_files


def best_rate(values: list[bytes], fn: Callable[[bytes], object], repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        for value in values:
            fn(value)
        best = max(best, len(values) / (time.perf_counter() - started))
    return best


def best_batch_rate(values: list[bytes], fn: Callable[[list[bytes], list[float]], object],
                    size: int, received: float, repeat: int) -> float:
    batches = [values[i:i + size] for i in range(0, len(values), size)]
    times = [[received] * len(batch) for batch in batches]
    best = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        for batch, at in zip(batches, times, strict=True):
            fn(batch, at)
        best = max(best, len(values) / (time.perf_counter() - started))
    return best


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.parse", description=__doc__)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--invalid-ratio", type=float, default=0.02)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args()
    values = [e.value for e in PaymentGenerator(load_scenario(), seed=1,
                                                invalid_ratio=args.invalid_ratio)
              .events(args.events)]
    received = datetime.now(UTC)
    fast = compile_files().validator
    slow = Validator(fast.schema, fast.rules, fast.mode, fast_path=False)
    generic = jsonschema.Draft7Validator(fast.schema)

    def generic_parse(value: bytes) -> object:
        try:
            return generic.is_valid(orjson.loads(value))
        except orjson.JSONDecodeError:
            return None

    at = received.timestamp()
    results = {
        "one at a time (msgspec fast path + fastjsonschema)":
            best_rate(values, lambda v: fast.parse(v, received), args.repeat),
        "worker, batches of 500 (parse_many: the rules over the batch)":
            best_batch_rate(values, fast.parse_many, 500, at, args.repeat),
        "worker, batches of 50":
            best_batch_rate(values, fast.parse_many, 50, at, args.repeat),
        "authoritative only (orjson + fastjsonschema)":
            best_rate(values, lambda v: slow.parse(v, received), args.repeat),
        "jsonschema generic validator (orjson + is_valid)":
            best_rate(values, generic_parse, max(1, args.repeat - 2)),
    }
    if args.json:
        print(json.dumps({"events": len(values), "invalid_ratio": args.invalid_ratio,
                          "per_second": {k: round(v) for k, v in results.items()}}))
        return
    print(f"parse + validate, {len(values):,} events, {args.invalid_ratio:.0%} invalid, "
          f"one core, best of {args.repeat}:")
    for name, rate in results.items():
        print(f"  {rate:>10,.0f} events/s  {name}")


if __name__ == "__main__":
    main()
