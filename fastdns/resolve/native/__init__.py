"""The native path: names resolved by c-ares as the host would (``resolver``), on the worker's
event loop (``cares``); the host's other NSS sources for A/AAAA through glibc (``nss``, with the
pure ``nsswitch`` parser).

Runs in: workers only, after the fork (it loads pycares). May import: ``fastdns.dns``,
``fastdns.config``, ``fastdns.resolve`` (hosts, resolvconf), ``fastdns.system.files``,
``fastdns.metrics.stats``. Nothing on the supervisor/CLI/config side may import it
(tests/unit/test_layers.py). ``NativeResolver`` implements the pipeline's ``NativeLookup``
protocol without importing it (the pipeline is above); the worker injects it.
"""
