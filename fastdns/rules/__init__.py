"""The DNAT rules for the virtual DNS address: the rule texts (``plan``, pure), the iptables
I/O (``iptables``), the rules process (``main``), interface addresses (``ifaddrs``) and the
``fastdns rules`` / ``guest-script`` commands (``cli``).

Runs in: the rules process (privileged) and the CLI. May import: ``fastdns.config``,
``fastdns.dns``, ``fastdns.resolve.resolvconf``, ``fastdns.ipc``, ``fastdns.system``,
``fastdns.metrics.stats``, ``fastdns.errors``; never the serving code, an event loop or c-ares.
"""
