"""``python -m simulator``: produce payment events to the ``payments`` topic.

Examples::

    python -m simulator --count 100000 --rate 5000 --seed 7 --invalid-ratio 0.05
    python -m simulator --scenario my.yaml --dump 10     # print events, send nothing
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from datetime import datetime

from runtime.settings import Settings
from simulator.generator import DEFAULT_SCENARIO, PaymentGenerator, ScenarioError, load_scenario
from simulator.producer import BrokerUnreachable, ensure_topic, produce


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m simulator", description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=100_000, help="events to send (default 100000)")
    p.add_argument("--rate", type=float, default=0.0, help="events/s, 0 = as fast as possible")
    p.add_argument("--seed", type=int, default=42, help="random seed (same seed, same events)")
    p.add_argument("--invalid-ratio", type=float, default=0.0, help="share of invalid events")
    p.add_argument("--scenario", default=str(DEFAULT_SCENARIO), help="scenario YAML file")
    p.add_argument("--start", help="event time of the first event (RFC 3339), overrides scenario")
    p.add_argument("--topic", default="payments")
    p.add_argument("--broker", help="bootstrap host:port (default: BROKER_URL)")
    p.add_argument("--dump", type=int, metavar="N", help="print N events as JSON lines and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # errors are reported below
    if args.count < 0 or args.rate < 0:
        print("error: --count and --rate must not be negative", file=sys.stderr)
        return 2
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError; secrets are not echoed
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(args.scenario)
        start = datetime.fromisoformat(args.start.replace("Z", "+00:00")) if args.start else None
        gen = PaymentGenerator(scenario, seed=args.seed, invalid_ratio=args.invalid_ratio,
                               start=start)
    except (ScenarioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dump is not None:
        for event in gen.events(args.dump):
            sys.stdout.write(event.value.decode("utf-8", "backslashreplace") + "\n")
        return 0
    broker = settings.broker
    if args.broker:  # the same credentials, another address
        broker = dataclasses.replace(broker, bootstrap=args.broker)
    try:
        asyncio.run(ensure_topic(broker, args.topic, settings.topic_partitions))
        summary = asyncio.run(produce(gen.events(args.count), broker=broker,
                                      topic=args.topic, total=args.count, rate=args.rate,
                                      progress=not args.quiet))
    except BrokerUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for line in summary.lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
