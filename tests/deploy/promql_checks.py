"""Evaluate dashboard and alert queries over several instances and check how they
aggregate: sums add up per instance, max/min pick the extreme instance, ratios divide
summed parts, quantiles come from buckets summed across instances.

The top-level shape of an expression is read lexically (balanced parentheses, operators
outside them); promtool and Prometheus have already proved every expression parses.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Callable

from tests.assets.promql import metric_names
from tests.support import Prometheus, http_get

Vector = dict[frozenset[tuple[str, str]], float]

_AGGREGATION = re.compile(r"^(sum|max|min)\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(")
_QUANTILE = re.compile(r"^histogram_quantile\(\s*([0-9.]+)\s*,")


def query_at(prometheus: Prometheus, promql: str, at: float) -> Vector:
    """`promql` evaluated at the instant `at`, as {labels: value}."""
    params = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
    status, _, body = http_get(f"{prometheus.url}/api/v1/query?{params}")
    payload = json.loads(body)
    assert status == 200, f"HTTP {status} {payload.get('error')}: {promql}"
    return {
        frozenset(item["metric"].items()): float(item["value"][1])
        for item in payload["data"]["result"]
    }


def restrict(promql: str, instance: str) -> str:
    """`promql` with every selector limited to one instance."""
    names = metric_names(promql)
    assert names, promql
    matcher = f'instance="{instance}"'
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b(\s*\{)?")

    def limit(match: re.Match[str]) -> str:
        if match.group(2):
            return f"{match.group(1)}{{{matcher}, "
        return f"{match.group(1)}{{{matcher}}}"

    return pattern.sub(limit, promql)


def _closing(text: str, start: int) -> int:
    """Index of the parenthesis closing the one at `start`."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    msg = f"unbalanced parentheses in {text!r}"
    raise AssertionError(msg)


def strip_parens(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and _closing(expr, 0) == len(expr) - 1:
        expr = expr[1:-1].strip()
    return expr


def split_top(expr: str, operators: tuple[str, ...]) -> list[str]:
    """`expr` split at binary operators outside parentheses and braces."""
    parts, depth, current, i = [], 0, "", 0
    while i < len(expr):
        ch = expr[i]
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if depth == 0:
            found = next((op for op in operators if expr.startswith(op, i)), None)
            if found is not None and current.strip():
                parts.append(current)
                current = ""
                i += len(found)
                continue
        current += ch
        i += 1
    parts.append(current)
    return [part.strip() for part in parts]


def whole_call(expr: str) -> bool:
    """Whether `expr` is one function or aggregation call, nothing after it."""
    opening = expr.find("(")
    if opening < 0:
        return False
    if _AGGREGATION.match(expr):
        opening = _AGGREGATION.match(expr).end() - 1  # type: ignore[union-attr]
    return _closing(expr, opening) == len(expr) - 1


def aggregation(expr: str) -> str | None:
    """`sum`, `max` or `min` when `expr` is one such aggregation, else None."""
    expr = strip_parens(expr)
    found = _AGGREGATION.match(expr)
    return found.group(1) if found and whole_call(expr) else None


def additive(expr: str) -> bool:
    """A sum of sums (`or vector(0)` allowed): adding per-instance results gives the total."""
    terms = split_top(strip_parens(expr), (" or ", "+"))
    return all(strip_parens(t) == "vector(0)" or aggregation(t) == "sum" for t in terms)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile on cumulative bucket counts {le: count}."""
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf:
        return math.nan
    counts = [buckets[b] for b in bounds]
    for i in range(1, len(counts)):  # Prometheus' ensureMonotonic
        counts[i] = max(counts[i], counts[i - 1])
    total = counts[-1]
    if total == 0:
        return math.nan
    rank = q * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start = 0.0 if index == 0 else bounds[index - 1]
    below = 0.0 if index == 0 else counts[index - 1]
    return start + (bounds[index] - start) * (rank - below) / (counts[index] - below)


def close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _largest(values: list[float]) -> float:
    return max(values)


def _smallest(values: list[float]) -> float:
    return min(values)


_COMBINERS: dict[str, Callable[[list[float]], float]] = {
    "sum": math.fsum,
    "max": _largest,
    "min": _smallest,
}


def check_aggregates_across(
    evaluate: Callable[[str], Vector], expr: str, instances: list[str]
) -> str | None:
    """None if `expr` aggregates across `instances` as its shape says, else the reason.

    `evaluate` runs PromQL at one fixed instant. Returns "per-instance" (not an error)
    when the expression keeps the instance label instead of aggregating.
    """
    whole = evaluate(expr)
    if any("instance" in dict(labels) for labels in whole):
        return "per-instance"
    parts = [evaluate(restrict(expr, instance)) for instance in instances]
    kind = aggregation(expr)
    if kind is None and additive(expr):
        kind = "sum"  # a sum of sums, e.g. `sum(x) or vector(0)`
    core = strip_parens(expr)
    quantile = _QUANTILE.match(core)
    if kind is not None:
        keys = set(whole).union(*parts)
        combine = _COMBINERS[kind]
        for key in keys:
            present = [part[key] for part in parts if key in part]
            expected = combine(present) if present else math.nan
            if key not in whole or not close(whole[key], expected):
                return f"{kind}: {dict(key)} is {whole.get(key)}, per instance {present}"
        return None
    if quantile and whole_call(core):
        inner = core[quantile.end() : -1]
        if aggregation(inner) != "sum":
            return f"quantile of buckets not summed across instances: {inner}"
        summed: dict[frozenset[tuple[str, str]], dict[float, float]] = {}
        for instance in instances:
            for labels, value in evaluate(restrict(inner, instance)).items():
                rest = frozenset((k, v) for k, v in labels if k != "le")
                le = float(dict(labels)["le"])
                summed.setdefault(rest, {}).setdefault(le, 0.0)
                summed[rest][le] += value
        for key, buckets in summed.items():
            expected = histogram_quantile(float(quantile.group(1)), buckets)
            if math.isnan(expected) and key not in whole:
                continue
            if key not in whole or not close(whole[key], expected):
                return f"quantile {dict(key)}: {whole.get(key)} != {expected} from summed buckets"
        return None
    halves = split_top(core, ("/",))
    if len(halves) == 2 and all(additive(half) for half in halves):
        numerator: Vector = {}
        denominator: Vector = {}
        for target, half in zip((numerator, denominator), halves, strict=True):
            for instance in instances:
                for labels, value in evaluate(restrict(half, instance)).items():
                    target[labels] = target.get(labels, 0.0) + value
        for key, value in whole.items():
            top, bottom = numerator.get(key, 0.0), denominator[key]
            if bottom == 0:  # PromQL float division: 0/0 is NaN, x/0 is ±Inf
                expected = math.nan if top == 0 else math.copysign(math.inf, top)
            else:
                expected = top / bottom
            if not close(value, expected):
                return f"ratio {dict(key)}: {value} != {expected} from summed parts"
        return None
    return f"not an aggregation across instances: {expr}"


def label_values(vector: Vector, name: str) -> set[str]:
    """The values of label `name` in `vector`."""
    return {dict(labels)[name] for labels in vector if name in dict(labels)}
