"""fastdns: a fast host-side DNS forwarder that answers like Lima's host resolver."""

__version__ = "0.1.0"
