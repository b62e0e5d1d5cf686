"""The serving datapath of one worker process: the event loop and its setup (``worker``), the
UDP reader and its per-query state (``udp``, ``state``), the TCP server and its slot policy
(``tcp``, ``tcpslots``), the per-source gate (``gate``), and per-query accounting
(``accounting``).

Runs in: workers only (uvloop). May import: ``fastdns.resolve`` and everything below it
(``dns``, ``policy``, ``config``, ``system``, ``ipc``, ``metrics.stats``, ``errors``); never
``fastdns.supervise``, ``fastdns.rules`` or the metrics process.
"""
