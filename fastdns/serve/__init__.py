"""The serving datapath of one worker process: the event loop and its setup (``worker``), the
UDP reader and its per-query state (``udp``, ``state``), the TCP server and its slot policy
(``tcp``, ``tcpslots``), the per-source gate (``gate``), per-query accounting
(``accounting``), and the parameters a forked worker gets (``launch``, which the supervisor
imports: it loads nothing that serves).

Runs in: workers only (uvloop). May import: ``fastdns.resolve`` and everything below it
(``dns``, ``policy``, ``config``, ``system``, ``ipc``, ``metrics.stats``, ``errors``); never
``fastdns.supervise``, ``fastdns.rules`` or the metrics process.
"""
