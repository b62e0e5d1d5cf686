"""Throughput and latency bench: fastdns against dnsmasq, unbound and an NSD upstream.

Run it with ``python -m bench`` (see ``bench/README.md``). Standard library only, so it runs
with any Python 3.11+, not only the project's virtualenv.
"""
