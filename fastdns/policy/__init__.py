"""Client policy without sockets: who may query (``acl``) and how much (``ratelimit``), and
their config types.

Runs in: workers (the gate), the supervisor and the CLI (config validation, log lines).
May import: ``fastdns.errors`` and the standard library only.
"""
