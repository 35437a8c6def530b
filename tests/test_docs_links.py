"""Every relative link in README.md and docs/*.md resolves inside a fresh clone.

A link target must be a file (or folder) under the repository root that git
tracks (an ignored or untracked file is not in a clone), and a ``#fragment``
into a markdown file must name one of its headings (GitHub's anchors). Links
are read with markdown-it (rich's parser), so code spans and blocks do not count.
"""
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from markdown_it import MarkdownIt

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def links(text: str) -> list:
    """Targets of the inline links, images and reference links of a markdown text."""
    out = []
    for token in MarkdownIt("commonmark").parse(text):
        for child in token.children or ():
            if child.type == "link_open":
                out.append(child.attrs["href"])
            elif child.type == "image":
                out.append(child.attrs["src"])
    return out


def anchors(text: str) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -N for repeats."""
    seen, out = {}, set()
    tokens = MarkdownIt("commonmark").parse(text)
    for opening, inline in zip(tokens, tokens[1:]):
        if opening.type == "heading_open" and inline.type == "inline":
            slug = re.sub(r"[^\w\- ]", "", inline.content.lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def tracked_files(root: Path):
    """Paths git tracks under ``root`` (relative, with their parent folders), or None outside git."""
    try:
        proc = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    files = {Path(p) for p in proc.stdout.split("\0") if p}
    return files | {parent for f in files for parent in f.parents}


def broken_links(doc: Path, root: Path, tracked) -> list:
    """``(target, why)`` for each relative link of ``doc`` that a clone of ``root`` cannot follow."""
    text = doc.read_text()
    broken = []
    for target in links(text):
        url = urlparse(target)
        if url.scheme or url.netloc:  # http(s):, mailto:, ...: not a file of the repository
            continue
        path = (doc.parent / unquote(url.path)).resolve() if url.path else doc.resolve()
        if not path.is_relative_to(root.resolve()):
            broken.append((target, "points outside the repository"))
        elif not path.exists():
            broken.append((target, "no such file"))
        elif tracked is not None and path.relative_to(root.resolve()) not in tracked:
            broken.append((target, "not tracked by git (absent from a clone)"))
        elif url.fragment and path.suffix == ".md" and url.fragment not in anchors(path.read_text()):
            broken.append((target, f"no heading with anchor #{url.fragment}"))
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_relative_links_resolve_in_a_clone(doc):
    assert broken_links(doc, REPO, tracked_files(REPO)) == []


def test_the_docs_exist_and_the_readme_points_at_the_design():
    assert (REPO / "docs" / "DESIGN.md") in DOCS
    assert "docs/DESIGN.md" in links((REPO / "README.md").read_text())


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "A.md").write_text("# Title\n\n## Two words\n")
    doc = tmp_path / "README.md"
    doc.write_text("# Top\n\n[ok](docs/A.md) [ok](docs/A.md#two-words) [web](https://example.org/x.md) [self](#top)\n"
                   "[gone](docs/B.md) [out](../shared/DESIGN.md) [anchor](docs/A.md#nope)\n"
                   "`[code](not/a/link.md)`\n\n[ref]: docs/C.md\n\nsee [ref]\n")
    found = broken_links(doc, tmp_path, tracked=None)
    assert [t for t, _ in found] == ["docs/B.md", "../shared/DESIGN.md", "docs/A.md#nope", "docs/C.md"]
    assert broken_links(doc, tmp_path, tracked={Path("README.md")})[0] == ("docs/A.md", "not tracked by git "
                                                                         "(absent from a clone)")
