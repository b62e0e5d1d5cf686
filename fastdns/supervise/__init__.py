"""The process model: the supervisor's signal loop and children (``arbiter``), what each forked
child runs (``children``), rolling reloads (``generations``), the state file (``statefile``),
binding the listening sockets before the fork (``binding``), and the private run directory
(``rundir``).

Runs in: the supervisor (no event loop, no thread, no c-ares). May import: ``fastdns.config``,
``fastdns.policy``, ``fastdns.ipc``, ``fastdns.system``, ``fastdns.metrics.stats``,
``fastdns.errors``; the serving, metrics and rules entry points only inside the ``child_*``
functions, after the fork (tests/unit/test_layers.py).
"""
