"""Observability. ``stats``: the plain counters workers keep and the datagram format they send
(imported by every process). ``definitions``: every exported metric. ``context``,
``aggregator``, ``http`` and ``main``: the metrics process (prometheus-client lives only there).

Runs in: ``stats`` everywhere; the rest in the metrics process. May import: ``fastdns.config``,
``fastdns.ipc``, ``fastdns.system``, ``fastdns.errors``; never the serving or resolution code.
"""
