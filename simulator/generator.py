"""Deterministic payment traffic: same scenario and seed, same events, byte for byte."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml

from models.errors import PaymentMonitorError

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
DEFAULT_SCENARIO = SCENARIO_DIR / "default.yaml"

INVALID_KINDS = (
    "not_json", "not_object", "not_utf8", "missing_field", "bad_enum", "negative_amount",
    "float_amount", "declined_without_code", "unknown_field", "bad_event_time",
)


class ScenarioError(PaymentMonitorError, ValueError):
    """The scenario file is missing, not YAML, or lacks a setting."""


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One message to produce; ``payload`` is None for events that are not JSON objects."""

    key: bytes
    value: bytes
    kind: str  # "valid", "duplicate", or one of INVALID_KINDS
    payload: dict[str, Any] | None
    # for a valid payment made by a pattern the compliance rules look for:
    # "velocity_burst" or "structuring_run"; for a duplicate: "other_partition" when
    # re-sent under another merchant's key
    pattern: str = ""


def load_scenario(path: str | Path = DEFAULT_SCENARIO) -> dict[str, Any]:
    """Read and check a scenario YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {path} is not valid YAML: {exc}") from exc
    required = ("merchants", "customers", "events_per_second", "channels", "payment_methods",
                "currencies", "countries", "status_mix", "decline_codes", "processing_ms")
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        raise ScenarioError(f"scenario {path} lacks: {', '.join(missing)}")
    return data


class _Choice:
    def __init__(self, weights: dict[str, Any]) -> None:
        self.values = list(weights)
        self.cum: list[float] = []
        total = 0.0
        for v in weights.values():
            total += float(v["weight"] if isinstance(v, dict) else v)
            self.cum.append(total)

    def pick(self, rng: random.Random) -> Any:
        return rng.choices(self.values, cum_weights=self.cum)[0]


def _format_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class PaymentGenerator:
    """Yields :class:`SimEvent` objects for a scenario, a seed and an invalid ratio."""

    def __init__(self, scenario: dict[str, Any], *, seed: int = 42, invalid_ratio: float = 0.0,
                 start: datetime | None = None) -> None:
        if not 0.0 <= invalid_ratio <= 1.0:
            raise ScenarioError("invalid ratio must be between 0 and 1")
        self.s = scenario
        self.seed = seed
        self.invalid_ratio = invalid_ratio
        if start is None:
            configured = scenario.get("start_time")
            if configured:
                start = datetime.fromisoformat(str(configured).replace("Z", "+00:00"))
        # None: dated around now, the last event at the current second (see events())
        self.start = start.astimezone(UTC) if start is not None else None
        self.channels = _Choice(scenario["channels"])
        self.methods = _Choice(scenario["payment_methods"])
        self.currencies = _Choice(scenario["currencies"])
        self.countries = _Choice(scenario["countries"])
        self.statuses = _Choice(scenario["status_mix"])
        self.declines = _Choice(scenario["decline_codes"])

    def events(self, count: int) -> Iterator[SimEvent]:
        rng = random.Random(self.seed)
        s = self.s
        step = 1.0 / float(s["events_per_second"])
        start = self.start
        if start is None:  # the events end now, so the current window is the newest one
            now = datetime.now(UTC).replace(microsecond=0)
            start = now - timedelta(seconds=count * step)
        late_ratio = float(s.get("late_event_ratio", 0.0))
        late_lo, late_hi = s.get("late_by_seconds", [60, 900])
        dup_ratio = float(s.get("duplicate_ratio", 0.0))
        moved_ratio = float(s.get("resent_across_partitions", 0.0))
        bursts = _Pattern.of(s, "velocity_bursts")
        runs = _Pattern.of(s, "structuring_runs")
        # payments of bursts and runs, due at their event time: (time, order, pattern, args)
        due: list[tuple[datetime, int, str, dict[str, Any]]] = []
        serial = itertools.count()
        sent_ids: list[tuple[bytes, bytes]] = []
        for i in range(count):
            t = start + timedelta(seconds=i * step)
            for pattern in (bursts, runs):
                if pattern is not None and rng.random() < pattern.ratio:
                    # squeezed into what is left of the events, so every payment is sent
                    for when, args in pattern.plan(rng, t, s, (count - i - 1) * step):
                        heapq.heappush(due, (when, next(serial), pattern.name, args))
            if due and due[0][0] <= t:
                when, _, name, args = heapq.heappop(due)
                payload = self._payment(rng, i, when, **args)
                value = orjson.dumps(payload)
                yield SimEvent(payload["merchant_id"].encode(), value, "valid", payload, name)
                continue
            if rng.random() < late_ratio:
                t -= timedelta(seconds=rng.uniform(late_lo, late_hi))
            payload = self._payment(rng, i, t)
            key = payload["merchant_id"].encode()
            roll = rng.random()
            if roll < self.invalid_ratio:
                kind = INVALID_KINDS[rng.randrange(len(INVALID_KINDS))]
                yield _invalid(kind, key, payload)
            elif sent_ids and roll < self.invalid_ratio + dup_ratio:
                dup_key, dup_value = sent_ids[rng.randrange(len(sent_ids))]
                yield SimEvent(dup_key, dup_value, "duplicate", orjson.loads(dup_value))
            elif sent_ids and roll < self.invalid_ratio + dup_ratio + moved_ratio:
                # the same record under another merchant's key: another partition
                dup_key, dup_value = sent_ids[rng.randrange(len(sent_ids))]
                other = f"m{rng.randrange(s['merchants']):05d}".encode()
                yield SimEvent(other, dup_value, "duplicate", orjson.loads(dup_value),
                               "other_partition" if other != dup_key else "")
            else:
                value = orjson.dumps(payload)
                if (dup_ratio or moved_ratio) and len(sent_ids) < 10_000:
                    sent_ids.append((key, value))
                yield SimEvent(key, value, "valid", payload)

    def _payment(self, rng: random.Random, i: int, t: datetime, *,
                 merchant: str | None = None, customer: str | None = None,
                 amount: int | None = None, currency: str | None = None) -> dict[str, Any]:
        """One payment's document; a pattern's payment fixes some of its fields."""
        s = self.s
        proc = s["processing_ms"]
        drawn_merchant = f"m{rng.randrange(s['merchants']):05d}"
        drawn_currency = self.currencies.pick(rng)
        currency = currency or drawn_currency
        cur = s["currencies"][currency]
        status = self.statuses.pick(rng)
        drawn_customer = f"c{rng.randrange(s['customers']):06d}"
        drawn_amount = int(rng.lognormvariate(math.log(cur["median_minor"]), cur["sigma"]))
        payload: dict[str, Any] = {
            "schema_version": "1",
            "transaction_id": f"tx-{self.seed}-{i:09d}",
            "event_time": _format_time(t),
            "merchant_id": merchant or drawn_merchant,
            "customer_id": customer or drawn_customer,
            "amount_minor": amount if amount is not None else drawn_amount,
            "currency": currency,
            "channel": self.channels.pick(rng),
            "payment_method": self.methods.pick(rng),
            "status": status,
            "decline_code": self.declines.pick(rng) if status == "declined" else None,
            "country": self.countries.pick(rng),
            "processing_ms": min(600_000, int(rng.lognormvariate(math.log(proc["median"]),
                                                                 proc["sigma"]))),
        }
        if rng.random() < float(s.get("card_bin_ratio", 0.0)):
            payload["card_bin"] = f"{rng.randrange(400000, 560000):06d}"
        if rng.random() < float(s.get("risk_score_ratio", 0.0)):
            payload["risk_score"] = round(rng.random(), 4)
        return payload


@dataclass(frozen=True)
class _Pattern:
    """A pattern the compliance rules look for, started at a share (``ratio``) of the
    events: ``payments`` (a range) payments of one customer at ``merchants`` merchants
    within ``within_seconds`` of event time; a structuring run's amounts lie in ``band``
    (fractions of its currency's ``thresholds_minor``)."""

    name: str
    ratio: float
    payments: tuple[int, int]
    within: float
    merchants: int
    band: tuple[float, float] | None = None
    thresholds: dict[str, int] | None = None

    @classmethod
    def of(cls, scenario: dict[str, Any], key: str) -> _Pattern | None:
        spec = scenario.get(key)
        if not spec or not float(spec.get("ratio", 0)):
            return None
        try:
            low, high = (int(n) for n in spec["payments"])
            band = tuple(float(f) for f in spec["band"]) if "band" in spec else None
            return cls(
                "velocity_burst" if key == "velocity_bursts" else "structuring_run",
                float(spec["ratio"]), (low, high), float(spec["within_seconds"]),
                int(spec.get("merchants", 1)), band,  # type: ignore[arg-type]
                {str(c): int(v) for c, v in spec["thresholds_minor"].items()}
                if "thresholds_minor" in spec else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise ScenarioError(f"scenario setting {key} is incomplete or not numbers: "
                                f"{exc}") from exc

    def plan(self, rng: random.Random, t: datetime, scenario: dict[str, Any],
             room: float) -> list[tuple[datetime, dict[str, Any]]]:
        """The payments of one occurrence starting at ``t`` and ending within ``room``
        seconds: (event time, fixed fields)."""
        customer = f"c{rng.randrange(scenario['customers']):06d}"
        merchants = [f"m{rng.randrange(scenario['merchants']):05d}"
                     for _ in range(self.merchants)]
        n = rng.randint(*self.payments)
        times = sorted(rng.uniform(0, min(self.within, room)) for _ in range(n))
        fixed: dict[str, Any] = {"customer": customer}
        if self.band is not None and self.thresholds:
            fixed["currency"] = sorted(self.thresholds)[rng.randrange(len(self.thresholds))]
        out = []
        for k, offset in enumerate(times):
            args = {**fixed, "merchant": merchants[k % len(merchants)]}
            if "currency" in fixed:
                limit = self.thresholds[fixed["currency"]]  # type: ignore[index]
                low, high = self.band  # type: ignore[misc]
                # within [low x limit, high x limit), so below the limit
                args["amount"] = rng.randrange(math.ceil(limit * low),
                                               max(math.ceil(limit * low) + 1,
                                                   math.floor(limit * high)))
            out.append((t + timedelta(seconds=offset), args))
        return out


def _invalid(kind: str, key: bytes, payload: dict[str, Any]) -> SimEvent:
    bad = dict(payload)
    if kind == "not_json":
        return SimEvent(key, b'{"transaction_id": "broken', kind, None)
    if kind == "not_object":
        return SimEvent(key, orjson.dumps([payload["transaction_id"]]), kind, None)
    if kind == "not_utf8":
        return SimEvent(key, b'{"transaction_id": "\xff\xfe"}', kind, None)
    if kind == "missing_field":
        del bad["merchant_id"]
    elif kind == "bad_enum":
        bad["channel"] = "carrier_pigeon"
    elif kind == "negative_amount":
        bad["amount_minor"] = -abs(bad["amount_minor"]) - 1
    elif kind == "float_amount":
        bad["amount_minor"] = bad["amount_minor"] + 0.5
    elif kind == "declined_without_code":
        bad["status"], bad["decline_code"] = "declined", None
    elif kind == "unknown_field":
        bad["favourite_colour"] = "blue"
    elif kind == "bad_event_time":
        bad["event_time"] = "22/11/2026 10:00"
    return SimEvent(key, orjson.dumps(bad), kind, bad)
