"""Parse and validate throughput on one core: ``python -m benchmarks.parse``.

Realistic simulator events (2 % invalid), bytes in, Payment or ParseFailure out.
"""

from __future__ import annotations

import argparse
import time

from pipeline.parse import compiled_schema, parse_payment
from simulator.generator import PaymentGenerator, load_scenario


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.parse", description=__doc__)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    values = [e.value for e in PaymentGenerator(load_scenario(), seed=1, invalid_ratio=0.02)
              .events(args.events)]
    validate = compiled_schema()
    best = 0.0
    for _ in range(args.repeat):
        started = time.perf_counter()
        for value in values:
            parse_payment(value, validate)
        best = max(best, len(values) / (time.perf_counter() - started))
    print(f"parse + validate: {best:,.0f} events/s (best of {args.repeat}, "
          f"{len(values):,} events, one core)")


if __name__ == "__main__":
    main()
