"""The README is a front door and docs/ holds the rest: every link resolves inside the
repository, every page is reachable from the README, the README's first screen starts a
newcomer, and the numbers it shows are the generated ones."""

import re
from pathlib import Path

import pytest

from tests.helpers import ROOT
from vitsweep.config import options

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
FIRST_SCREEN = 60  # lines
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text()))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M)}


def test_there_are_docs_pages():
    assert DOCS, "docs/*.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page):
    for target in links(page):
        assert not re.match(r"[a-z][a-z0-9+.-]*:", target), f"{page.name}: {target} leaves the repo"
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.is_relative_to(ROOT), f"{page.name}: {target} points outside the repository"
        assert "shared" not in file.relative_to(ROOT).parts[:1], f"{page.name}: {target}"
        assert file.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert file.suffix == ".md", f"{page.name}: {target}: an anchor in a non-page"
            assert anchor in anchors(file), f"{page.name}: {target}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_links_outside_the_repository(page):
    text = page.read_text()
    assert "http://" not in text and "https://" not in text, page.name
    assert "../shared" not in text, page.name


def test_the_readme_links_no_parent_folder():
    assert not [t for t in links(README) if "../" in t or t.startswith("http")]
    assert "](.." not in README.read_text()


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README)}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []


def test_the_readme_is_short():
    assert len(README.read_text()) <= 12_000


def test_the_readmes_first_screen_starts_a_newcomer():
    screen = "\n".join(README.read_text().splitlines()[:FIRST_SCREEN])
    for needed in (
        'pip install -e ".[dev]"',
        "pytest",
        "python src/run.py experiment=digits_try",
        "python src/run.py model=vitx device=cuda",
        "python src/run.py -m attention=softmax,linear embedding=patch,cnn",
        "python src/run.py -m experiment=fmnist_ablation",  # the command behind the table
    ):
        assert needed in screen, needed
    order = [
        screen.index(s)
        for s in (
            'pip install -e ".[dev]"',
            "experiment=digits_try",
            "model=vitx device=cuda",
            "| attention | embedding |",
        )
    ]
    assert order == sorted(order)


def _cells(table: str) -> list[list[str]]:
    rows = [line for line in table.splitlines() if line.startswith("|")]
    return [
        [c.strip() for c in row.strip().strip("|").split("|")]
        for i, row in enumerate(rows)
        if i != 1
    ]


def test_the_showcase_tables_are_the_generated_numbers():
    generated = (ROOT / "results" / "fmnist_ablation" / "comparison.md").read_text()
    headline = _cells(generated.split("\n\n")[2])
    for page in (README, ROOT / "docs" / "sweeps.md"):
        text = page.read_text()
        start = text.index("| " + " | ".join(headline[0]) + " |")
        shown = _cells(text[start:].split("\n\n")[0])
        assert shown == headline, page.name


@pytest.mark.parametrize(
    "group, page",
    [
        ("attention", "configuration.md"),
        ("embedding", "configuration.md"),
        ("data", "data.md"),
        ("experiment", "sweeps.md"),
        ("search", "sweeps.md"),
    ],
)
def test_every_option_has_a_row_in_its_docs_page(group, page):
    text = (ROOT / "docs" / page).read_text()
    assert [o for o in options(group) if f"| `{o}` |" not in text] == []


def test_the_words_are_the_current_ones():
    """nanovit is named as itself; "seed" is only the random seed."""
    for page in PAGES:
        text = page.read_text()
        for old in ("seed_quirks", "seed_table", "seed-style", "the seed's", '"seed"'):
            assert old not in text, f"{page.name}: {old}"
        assert "ickma/nanovit" not in " ".join(links(page)), page.name


def test_the_experiments_in_the_docs_exist():
    named = set(re.findall(r"experiment=(\w+)", "\n".join(p.read_text() for p in PAGES)))
    assert named <= set(options("experiment"))
