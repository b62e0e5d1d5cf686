"""Forwarding client queries to upstream servers: the forwarding state machine and upstream
health (``attempts``, sans-IO), its general driver (``upstream``), random-port upstream
sockets (``upsock``), the loop-guard socket mark (``sockmark``), the upstream sockets' epoll
set (``fdpoll``) and their port swap (``portswap``).

Runs in: workers. May import: ``fastdns.dns``, ``fastdns.config``, ``fastdns.resolve``'s
``resolvconf``, ``fastdns.metrics.stats``. Never the serving layer.
"""
