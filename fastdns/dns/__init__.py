"""The DNS wire format and the values every layer shares: parsing, building and rewriting
replies on bytes, answers rebuilt from structured results, the ``Resolved`` type, the loop
probe.

Runs in: every process that touches DNS bytes (workers; the rules process for the loop probe;
the CLI for name checks). May import: ``fastdns.errors`` and the standard library only.
"""
