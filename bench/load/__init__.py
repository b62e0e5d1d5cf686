"""pytest-benchmark load runs (``tests/netns-run .venv/bin/python -m pytest bench/load -q``)."""
