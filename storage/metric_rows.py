"""``dynamic_metrics`` COPY rows from a batch's metric columns, with no loop per payment.

What :meth:`pipeline.metrics.ExtractionResult.rows` gives for one payment, made for a
whole :class:`~pipeline.metrics.BatchMetrics` at once. Every payment's rows are the
same sequence of pieces: a metric's ``"name":`` and its value (formatted by orjson, as
the per-payment path does, from the whole column in one call) where the payment has the
metric, an empty piece where it has not, and the braces and separators around them.
The pieces form a table of ``bytes`` objects, one row per payment, filled a column at
a time; one ``b"".join`` makes the text.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from pipeline.metrics import BatchMetrics, MetricInfo

_SPECIAL = ("\\", "\t", "\n", "\r")


def copy_text(value: str) -> str:
    """``value`` escaped for COPY's text format (backslash, tab, newline, carriage return)."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                 .replace("\r", "\\r"))
    return value


def copy_keys(values: Sequence[str]) -> list[bytes]:
    """Each value escaped for COPY's text format and encoded (one scan of them all
    finds the common case: nothing to escape)."""
    joined = "".join(values)
    if any(c in joined for c in _SPECIAL):
        values = list(map(copy_text, values))
    return [v.encode() for v in values]


def metric_rows(metrics: BatchMetrics, tx_ids: Sequence[str], version: str) -> list[bytes]:
    """Per payment of ``metrics``: its ``dynamic_metrics`` COPY rows (``metrics``, then
    ``compliance`` when a per-event rule flagged it), each ending in a newline.

    Payments with the same *shape* (which metrics they have, and the value of each 0/1
    metric) have the same text but for their other values. Each shape's text is made
    once, by :meth:`~pipeline.metrics.ExtractionResult.rows` and orjson on one of its
    payments, with markers where the other values go; each payment's row is then its
    shape's text with its own values, formatted a column at a time."""
    n = len(metrics)
    if not n:
        return []
    flags: list[tuple[MetricInfo, np.ndarray, np.ndarray]] = []  # 0/1: the shape's
    variables: list[tuple[MetricInfo, np.ndarray, np.ndarray]] = []  # the other values
    for info in metrics.infos:
        values = metrics.values[info.index]
        if values is None:
            continue
        has = metrics.has(info)
        if values.dtype == np.int64 and bool(((values == 0) | (values == 1) | ~has).all()):
            flags.append((info, values, has))
        elif values.dtype == object or info.rule:
            return _each(metrics, tx_ids, version)  # no kernel, or an odd rule: the slow way
        else:
            variables.append((info, values, has))
    if 3 ** len(flags) * 2 ** len(variables) > 2 ** 62:
        return _each(metrics, tx_ids, version)
    code = np.zeros(n, np.int64)
    for _, values, has in flags:
        code = code * 3 + np.where(has, values + 1, 0)
    for _, _, has in variables:
        code = code * 2 + has
    codes, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    inverse = inverse.reshape(n)
    known = metrics.shapes
    layout = (tuple(info.index for info, _, _ in flags),
              tuple(info.index for info, _, _ in variables))
    shapes = []
    for shape, i in zip(codes.tolist(), first.tolist(), strict=True):
        found = known.get((layout, shape))
        if found is None:
            found = known[(layout, shape)] = _shape(metrics, i,
                                                    [info for info, _, _ in variables])
        shapes.append(found)
    width = max(len(holes) for _, holes, _ in shapes)
    keys = _objects(copy_keys(tx_ids))
    tail = f"\t{copy_text(version)}\n".encode()
    pieces: list[np.ndarray | bytes] = [keys]
    texts = [_texts(values, has) for _, values, has in variables]
    for j in range(width + 1):
        # the text before the j-th value (the row's start first), then the value
        pieces.append(_objects([statics[j] if j < len(statics) else b""
                                for statics, _, _ in shapes])[inverse])
        if j < width:
            holes = np.array([h[j] if j < len(h) else -1 for _, h, _ in shapes])[inverse]
            value = _objects([b""] * n)
            for k, text in enumerate(texts):
                mine = holes == k
                value[mine] = text[mine]
            pieces.append(value)
    pieces.append(tail)
    compliance = [c for _, _, c in shapes]
    if any(c is not None for c in compliance):
        flagged = np.array([c is not None for c in compliance])[inverse]
        pieces.append(_where(flagged, keys, b""))
        pieces.append(_objects([b"" if c is None else b"\tcompliance\t" + c + tail
                                for c in compliance])[inverse])
    return _rows(pieces, n)


_MARKER = re.compile(r'"\\u0000(\d+)\\u0000"')  # a value's place in a shape's JSON text


def _shape(metrics: BatchMetrics, i: int, variables: list[MetricInfo],
           ) -> tuple[list[bytes], list[int], bytes | None]:
    """Payment ``i``'s shape: its ``metrics`` row as the texts around its values
    (``"\\tmetrics\\t"`` first) and which of ``variables`` those values are, in order;
    and its ``compliance`` JSON, if a rule flagged it (wholly the shape's: 0/1 values)."""
    marker: dict[int, Any] = {info.index: f"\x00{k}\x00" for k, info in enumerate(variables)}
    result = metrics.result(i)
    result.emitted = [(info, marker.get(info.index, value)) for info, value in result.emitted]
    rows = result.rows()
    parts = _MARKER.split(orjson.dumps(rows[0][1]).decode())
    statics = [copy_text(p).encode() for p in parts[0::2]]
    statics[0] = b"\tmetrics\t" + statics[0]
    compliance = (copy_text(orjson.dumps(rows[1][1]).decode()).encode() if len(rows) > 1
                  else None)
    return statics, [int(k) for k in parts[1::2]], compliance


def _each(metrics: BatchMetrics, tx_ids: Sequence[str], version: str) -> list[bytes]:
    """:func:`metric_rows` payment by payment, as the per-payment path makes them (an
    extractor without a kernel, or a rule with values other than 0 and 1)."""
    tail = f"\t{copy_text(version)}\n"
    return ["".join(f"{copy_text(tx_id)}\t{kind}\t{copy_text(orjson.dumps(data).decode())}"
                    f"{tail}" for kind, data in metrics.result(i).rows()).encode()
            for i, tx_id in enumerate(tx_ids)]


def _objects(values: Sequence) -> np.ndarray:
    """A 1-D object array of ``values`` (``np.array`` would make bytes fixed-width)."""
    out = np.empty(len(values), object)
    out[:] = values
    return out


def _texts(values: np.ndarray, has: np.ndarray) -> np.ndarray:
    """Each value as orjson writes it where ``has``, else empty (an object array)."""
    if values.dtype == object:
        texts = [orjson.dumps(v) if h else b"" for v, h in zip(values.tolist(), has.tolist(),
                                                                strict=True)]
    else:
        texts = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    out = np.empty(len(values), object)
    out[:] = texts
    return out if has.all() else _where(has, out, b"")


def _where(mask: np.ndarray, yes: np.ndarray | bytes, no: np.ndarray | bytes) -> np.ndarray:
    """``yes`` where ``mask``, else ``no``: an object array of the same ``bytes`` objects
    (``np.where`` would make a fixed-width bytes array, copying every piece)."""
    out = np.empty(len(mask), object)
    out[:] = no
    out[mask] = yes[mask] if isinstance(yes, np.ndarray) else yes
    return out


def _rows(pieces: list[np.ndarray | bytes], n: int) -> list[bytes]:
    """One ``bytes`` per payment: its pieces joined (a constant piece is every row's)."""
    table = np.empty((n, len(pieces)), object)
    for j, piece in enumerate(pieces):
        table[:, j] = piece
    return list(map(b"".join, table.tolist()))


def select(rows: list[bytes], positions: Sequence[int]) -> bytes:
    """The rows at ``positions``, in that order, as one COPY input."""
    if not positions:
        return b""
    if len(positions) == 1:
        return rows[positions[0]]
    return b"".join(operator.itemgetter(*positions)(rows))
