"""Resolution: where an answer comes from. The order of sources (``pipeline``), static hosts
and the hosts file (``hosts``), resolv.conf and the upstream plan (``resolvconf``), and the
sources themselves: ``cache/``, ``forward/`` and ``native/``.

Runs in: workers only (``resolvconf`` also in the rules process). May import: ``fastdns.dns``,
``fastdns.config``, ``fastdns.errors``, ``fastdns.system``, ``fastdns.metrics.stats``; never
``fastdns.serve`` or anything above it (answers go back by return value or a callback passed
down).
"""
