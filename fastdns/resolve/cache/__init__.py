"""The per-worker packet cache: what is admitted and for how long (``admission``), the store
(``store``) and how it holds a reply (``entry``), and the ready replies of the UDP fast lane
(``front``). Pure: no I/O.

Runs in: workers. May import: ``fastdns.dns``, ``fastdns.config``.
"""
