"""What a fastdns process does with the operating system, shared by several processes: its
title, signals and privileges (``process``), binding the listening sockets (``sockets``), and
riding out half-rewritten files (``files``).

Runs in: the supervisor, workers, the metrics and the rules processes. May import:
``fastdns.errors``, ``fastdns.config`` and the standard library; never an event loop or
c-ares.
"""
