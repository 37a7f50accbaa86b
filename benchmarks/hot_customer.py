"""One very active customer: CPU per payment of the rules over time, by history size.

``python -m benchmarks.hot_customer`` extracts the shipped metrics and rules for a
payment whose customer already has N payments spread over the last hour (the dedupe
window), oldest first, the history held as the worker holds it
(:class:`pipeline.metrics.SortedHistory`: found by bisection) and as a plain list (what
the worker held before: every rule scanned every payment). Two payments: an ordinary one
(velocity decides) and one just under the structuring threshold, whose rule must look at
every payment of the customer's last hour in that currency.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from models.events import ParsedTransaction, TransactionStatus
from pipeline.metrics import SortedHistory
from storage.config_sources import compile_files


def payment(now: datetime, amount: int) -> ParsedTransaction:
    return ParsedTransaction(
        transaction_id="hot", event_time=now, merchant_id="m1", customer_id="hot-customer",
        amount_minor=amount, currency="EUR", channel="ecommerce", payment_method="card",
        status=TransactionStatus.APPROVED, decline_code=None, country="DE", processing_ms=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,10000,50000")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    engine = compile_files().engine
    now = datetime.now(UTC)
    for size in (int(s) for s in args.sizes.split(",")):
        for label, amount in (("ordinary", 4_500), ("just under", 950_000)):
            tx = payment(now, amount)
            t = tx.event_ts
            entries = [(t - 3600 * (size - i) / size, i, 4_500, "EUR") for i in range(size)]
            for name, history in (("sorted (now)", SortedHistory(entries)),
                                  ("list (before)", entries)):
                best = float("inf")
                for _ in range(args.repeat):
                    started = time.process_time()
                    engine.extract(tx, size, lambda _c, h=history: h)
                    best = min(best, time.process_time() - started)
                print(f"history {size:>7,}  {label:10} payment  {name:14} "
                      f"{best * 1e6:9.1f} us CPU")


if __name__ == "__main__":
    main()
