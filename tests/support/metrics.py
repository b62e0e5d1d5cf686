"""Scraping fastdns's metrics endpoint from tests: HTTP on loopback, parsed with
prometheus-client's own parser into ``{(sample name, frozenset(labels)): value}``."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from support import require_loopback

T = TypeVar("T")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# No proxy, ever: an inherited http_proxy variable must not route a scrape off loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(
    host: str,
    port: int,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of ``GET http://host:port/path``; HTTP errors are returned."""
    require_loopback(host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def scrape(host: str, port: int) -> Samples:
    status, _, body = http_get(host, port, "/metrics")
    assert status == 200, (status, body[:200])
    return parse(body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels (0 when absent: counters start at nothing)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of every ``name`` sample whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {ls: v for (n, ls), v in samples.items() if n == name}


def wait_until(
    probe: Callable[[], T],
    predicate: Callable[[T], bool],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call ``probe`` until ``predicate(result)``; AssertionError with the last result after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if predicate(result):
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s; last: {result!r}")
        time.sleep(interval)


def counters_not_below(before: Samples, after: Samples) -> list[str]:
    """Counter-like samples (``_total``, ``_count``, ``_sum``, ``_bucket``) that went down."""
    problems = []
    for key, old in before.items():
        name = key[0]
        if not name.endswith(("_total", "_count", "_sum", "_bucket")):
            continue
        new = after.get(key)
        if new is None or new < old:
            problems.append(f"{name}{dict(key[1])}: {old} -> {new}")
    return problems


__all__ = [
    "Samples",
    "counters_not_below",
    "http_get",
    "parse",
    "scrape",
    "series",
    "total",
    "value",
    "wait_until",
]
