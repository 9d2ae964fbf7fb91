"""The README and docs/ stay navigable and true to the code: every relative link and image points
at a file that exists (and, with an anchor, at a heading of it), and docs/configuration.md lists
exactly the settings `service/settings.py` reads. The checks are shown not to be vacuous on
pages written to fail them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGURATION = ROOT / "docs" / "configuration.md"
# Read by the test fixtures (tests/utils/env.py), not by the service's settings.
TEST_VARIABLES = {"HOTREFRESH_TEST_PG_ADMIN_URL", "HOTREFRESH_TEST_REDIS_URL"}

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_VARIABLE = re.compile(r"\bHOTREFRESH_[A-Z0-9_]*[A-Z0-9]\b")


def _prose(text: str) -> str:
    """The page without fenced code blocks and HTML comments (a `#` comment in a bash block is
    no heading, and a link-shaped string in code is no link)."""
    return _COMMENT.sub("", _FENCE.sub("", text))


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped (letters,
    digits, `-`, `_` and spaces kept), spaces as `-`, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_prose(page.read_text())):
        slug = "".join(c for c in heading.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """Every relative link or image of the page whose file, or whose anchor in it, is missing."""
    broken = []
    for target in _LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    return broken


def _settings_variables() -> set[str]:
    return {f"HOTREFRESH_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A section (`with code`)\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[fine](other.md#a-section-with-code) [self](#page) ![img](other.md)\n"
        "[gone](missing.md) [no heading](other.md#not-a-heading) [web](https://example.org/x)\n"
        "```\n[in code](missing-too.md)\n```\n"
    )
    assert broken_links(page) == [
        f"missing.md: no file {tmp_path / 'missing.md'}",
        "other.md#not-a-heading: no heading #not-a-heading in other.md",
    ]


def test_the_configuration_page_lists_every_setting_and_only_settings() -> None:
    listed = set(_VARIABLE.findall(CONFIGURATION.read_text()))
    assert _settings_variables() - listed == set(), "settings missing from docs/configuration.md"
    assert listed - _settings_variables() - TEST_VARIABLES == set(), "not settings"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_variable_a_page_names_is_a_setting(page: Path) -> None:
    named = set(_VARIABLE.findall(page.read_text()))
    assert named - _settings_variables() - TEST_VARIABLES == set()
