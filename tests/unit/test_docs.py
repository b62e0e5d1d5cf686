"""The documentation cannot drift from the code: config keys, metric names, links, citations.

Pure: reads files and imports modules, opens no socket.

- every key ``fastdns.config.known_keys()`` returns has a row in docs/configuration.md, and every
  row names such a key (and ``known_keys()`` itself agrees with what the loader accepts);
- every family in ``fastdns.metrics.METRICS`` has a row in docs/metrics.md, and every
  ``fastdns_...`` name written in the docs exists;
- every relative link in README.md, docs/, deploy/ and bench/README.md reaches a file, and a
  ``#fragment`` a heading of that file;
- README.md stays a front door (under 20 KB) and its test command is what ``.ci/run`` runs;
- comments and docstrings cite RFCs, Lima issues or files in this repository, not documents a
  reader cannot open.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastdns.config.load import build_config, known_keys
from fastdns.errors import ConfigError
from fastdns.metrics.definitions import METRICS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
METRICS_PAGE = DOCS / "metrics.md"
README = ROOT / "README.md"
README_LIMIT = 20 * 1024
# Pages other branches are still writing: a link to them is allowed until they exist.
PENDING = {DOCS / "failure-modes.md"}

ROW_KEY = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.MULTILINE)
METRIC_NAME = re.compile(r"\bfastdns_[a-z][a-z0-9_]*\*?")  # a trailing * is a family prefix
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    files = [README, *sorted(DOCS.glob("*.md")), *sorted((ROOT / "deploy").rglob("*.md"))]
    return [*files, ROOT / "bench" / "README.md"]


def table_keys(text: str) -> set[str]:
    """The first cell of every table row that is one backticked name."""
    return set(ROW_KEY.findall(text))


# ------------------------------------------------------------------------------------------
# configuration


def test_every_accepted_key_is_documented_and_every_documented_key_is_accepted() -> None:
    documented = table_keys(CONFIGURATION.read_text(encoding="utf-8"))
    accepted = known_keys()
    undocumented = sorted(accepted - documented)
    unknown = sorted(documented - accepted)
    assert not (undocumented or unknown), (
        "docs/configuration.md is out of step with fastdns.config.known_keys(): "
        f"add '| `KEY` | default | meaning |' rows for {undocumented}; "
        f"remove (or fix) the rows for keys the config does not accept: {unknown}"
    )


def _nested(path: str, value: object) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    node = doc
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return doc


def _complaints(doc: dict[str, Any]) -> list[str]:
    """Errors and warnings ``build_config`` has about ``doc``."""
    try:
        return list(build_config(doc).warnings)
    except ConfigError as e:
        return e.problems


def _says_unknown(path: str, complaints: list[str]) -> bool:
    return any(
        c.startswith(f"{path}: ") and ("unknown key" in c or "not a key" in c) for c in complaints
    )


@pytest.mark.parametrize("path", sorted(known_keys()))
def test_known_key_is_read_by_the_loader(path: str) -> None:
    assert not _says_unknown(path, _complaints(_nested(path, "\x00 not a valid value")))


@pytest.mark.parametrize("section", sorted({k.rsplit(".", 1)[0] for k in known_keys() if "." in k}))
def test_a_key_outside_known_keys_is_rejected(section: str) -> None:
    path = f"{section}.no_such_key"
    assert path not in known_keys()
    assert _says_unknown(path, _complaints(_nested(path, 1)))


# ------------------------------------------------------------------------------------------
# metrics


def test_every_exported_metric_is_documented() -> None:
    documented = table_keys(METRICS_PAGE.read_text(encoding="utf-8"))
    missing = [m.name for m in METRICS if m.name not in documented]
    assert not missing, (
        "docs/metrics.md has no row for these metrics fastdns/metrics.py exports; add "
        f"'| `NAME` | type | labels | meaning |' rows: {missing}"
    )


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_metric_name_in_the_docs_exists(page: Path) -> None:
    exported = {m.name for m in METRICS}
    histograms = {m.name for m in METRICS if m.kind == "histogram"}
    unknown = set()
    for name in METRIC_NAME.findall(page.read_text(encoding="utf-8")):
        if name.endswith("*"):
            prefix = name.rstrip("*")
            if not any(e.startswith(prefix) for e in exported):
                unknown.add(name)
            continue
        base = next(
            (
                name.removesuffix(s)
                for s in HISTOGRAM_SUFFIXES
                if name.endswith(s) and name.removesuffix(s) in histograms
            ),
            name,
        )
        if base not in exported:
            unknown.add(name)
    where = page.relative_to(ROOT)
    assert not unknown, f"{where} names metrics that do not exist: {sorted(unknown)}"


# ------------------------------------------------------------------------------------------
# links and the front door


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            found.add(slug(m.group(1)))
    return found


def links(page: Path) -> Iterator[str]:
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield from LINK.findall(line)


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_a_heading(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file_part, _, fragment = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if dest in PENDING and not dest.exists():
            continue
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_readme_is_a_front_door() -> None:
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; move details into docs/"


def test_readme_test_command_is_what_ci_runs() -> None:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"The test command .*? is exactly:\n\n```sh\n(.+?)\n```", text, re.DOTALL)
    assert m, "README.md must show the test command"
    command = m.group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in ci, f".ci/run must run README's test command {command!r}"
    assert "bash .ci/run" in text and "bash deploy/examples/demo" in text


# ------------------------------------------------------------------------------------------
# citations

# Documents outside this repository that comments used to cite.
FORBIDDEN = {
    "research notes": re.compile(
        r"tech[- ]?notes|research/|\baesthetics\b|lima-dns-spec", re.IGNORECASE
    ),
    "the brief": re.compile(r"\b(team|the) brief\b", re.IGNORECASE),
    "the style guide": re.compile(r"\bSTYLE(\.md| R\d+)"),
    "an acceptance case": re.compile(
        r"\bacceptance cases?\b|\bcases? \d+\b|\bspec §", re.IGNORECASE
    ),
    "the tracker": re.compile(r"\bissues? \d+\b", re.IGNORECASE),
}
# A section sign belongs to something a reader can open: an RFC, or a file of this repository.
SECTION = re.compile(r"§")
SECTION_OWNER = re.compile(r"(RFC\s*\d+|\.md|\.py)[,\s]*$")


def _prose(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and string literal in a Python file."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    for tok in tokens:
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            yield tok.start[0], tok.string


def _citation_problems(text: str) -> list[str]:
    problems = [what for what, pattern in FORBIDDEN.items() if pattern.search(text)]
    for m in SECTION.finditer(text):
        if not SECTION_OWNER.search(text[: m.start()]):
            problems.append("a § of an unnamed document")
    return problems


def _sources() -> list[Path]:
    me = Path(__file__).resolve()
    files = [p for top in ("fastdns", "tests", "bench") for p in sorted((ROOT / top).rglob("*.py"))]
    return [p for p in files if p.resolve() != me]


def test_comments_cite_only_what_a_reader_can_open() -> None:
    found = []
    for path in _sources():
        for line, text in _prose(path):
            for problem in _citation_problems(text):
                found.append(f"{path.relative_to(ROOT)}:{line}: cites {problem}")
    for page in markdown_files():
        for n, text in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for what, pattern in FORBIDDEN.items():
                if pattern.search(text):
                    found.append(f"{page.relative_to(ROOT)}:{n}: cites {what}")
    assert not found, (
        "cite an RFC (RFC 1035 §4.1), a Lima issue (lima#524) or a file of this repository "
        "(docs/answering.md) instead:\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    "text, ok",
    [
        ("# RFC 2308 §5: negative caching", True),
        ("# lima#380: busybox fails on >512-byte UDP replies", True),
        ("# see docs/answering.md", True),
        ("# (tech-notes §1.6)", False),
        ("# acceptance case 28", False),
        ("# team brief, contracts", False),
        ("# STYLE R7", False),
        ("# issue 13", False),
        ("# aesthetics §3.4", False),
    ],
)
def test_the_citation_check_tells_them_apart(text: str, ok: bool) -> None:
    assert (not _citation_problems(text)) == ok
