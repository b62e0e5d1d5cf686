"""Forwarding client queries to upstream servers: the forwarding state machine and upstream
health (``attempts``, sans-IO), its general driver (``upstream``), random-port upstream
sockets (``upsock``), the loop-guard socket mark (``sockmark``), the upstream sockets' epoll
set (``fdpoll``) and their port swap (``portswap``); per-domain routes (``routes``, pure),
macOS-style resolver directories (``resolverdir``) and pooled TCP connections to ``tcp://``
route servers (``tcppool``).

Runs in: workers. May import: ``fastdns.dns``, ``fastdns.config``, ``fastdns.system``,
``fastdns.resolve``'s ``resolvconf``, ``fastdns.metrics.stats``. Never the serving layer.
"""
