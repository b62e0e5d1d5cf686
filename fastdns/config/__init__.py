"""The configuration: the lima.yaml schema, its validation, and reading the file.

Runs in every process (the CLI and the supervisor load it; the children get the result).
May import: ``fastdns.errors``, ``fastdns.dns`` (name encoding), ``fastdns.policy`` (the ACL
and rate-limit sections), PyYAML. Never the serving code, pycares or uvloop.

``schema`` holds the frozen dataclasses; ``load`` builds them (``build_config``,
``load_config``) with the typed readers of ``values`` and the section loaders of
``sections``; ``yamlfile`` parses the text with the line of every key.
"""
