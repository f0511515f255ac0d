"""The documentation holds together: every link and image in a tracked markdown file resolves inside the
repository (anchors included), the README stays a front door, and what the code cites in docs/ exists.

The checks are plain functions, each also run on a made-up page that breaks it, so a checker that finds
nothing cannot pass unnoticed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 260

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
AUTOLINK = re.compile(r"<((?:https?|file|ftp)://[^>\s]+)>")
WEB = ("http://", "https://", "mailto:")


def tracked(pattern: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", "--", pattern], cwd=ROOT, capture_output=True, check=True)
    return [ROOT / p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


def unfenced(text: str) -> str:
    """The text with fenced code blocks blanked (a `# comment` in a shell block is no heading)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def prose(text: str) -> str:
    """The text with fenced blocks and code spans blanked: what a renderer turns into links."""
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), unfenced(text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a markdown text, with GitHub's -1, -2 … for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", unfenced(text), re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[str]:
    body = prose(text)
    return [m.group(1) for m in LINK.finditer(body)] + [m.group(1) for m in AUTOLINK.finditer(body)]


def link_problems(page: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the links of one markdown file: targets missing, outside ``root``, absolute, or an anchor
    that names no heading."""
    problems = []
    text = page.read_text(encoding="utf-8")
    for target in links(text):
        where = f"{page.relative_to(root)}: ({target})"
        if target.startswith(WEB):
            continue
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("/", "\\", "~")):
            problems.append(f"{where} is an absolute address; link within the repository by a relative path")
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page.resolve()
        if not dest.is_relative_to(root.resolve()):
            problems.append(f"{where} leaves the repository")
            continue
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(root.resolve())}")
    return problems


MARKDOWN = tracked("*.md")


def test_markdown_files_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in MARKDOWN}
    assert {"README.md", "docs/method.md", "docs/store-format.md", "docs/ARCHITECTURE.md"} <= names


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_and_images_resolve_inside_the_repository(page):
    assert link_problems(page) == []


def test_the_front_door_links_to_every_document():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = {t.partition("#")[0] for t in links(readme)}
    assert len(targets) >= 10, targets
    docs = {p.relative_to(ROOT).as_posix() for p in MARKDOWN if p.parts[len(ROOT.parts)] == "docs"}
    assert docs - targets == set(), "documents the README does not link"


def test_the_link_checker_catches_what_it_should(tmp_path):
    """Each kind of broken link is reported; the good ones are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A `code` heading: with punctuation!\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md) [fine](other.md#a-code-heading-with-punctuation) [fine](other.md#twice-1) [self](#page)\n"
        "[web](https://arxiv.org/abs/2601.06238) `[in code](missing.md)`\n\n"
        "```\n[in a fence](missing.md)\n```\n\n"
        "[gone](missing.md) ![img](../fig.png) [up](../../outside.md) [abs](/etc/passwd) [file](file:///x.md)\n"
        "[bad anchor](other.md#nope) [twice too many](other.md#twice-2) <file:///y.md>\n")
    (tmp_path / "fig.png").write_bytes(b"")
    found = link_problems(page, tmp_path)
    assert [p.split(": (")[1].split(")")[0] for p in found] == [
        "missing.md", "../../outside.md", "/etc/passwd", "file:///x.md", "other.md#nope", "other.md#twice-2",
        "file:///y.md"]


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    # the two set-up commands, exactly (.ci/run runs the second)
    assert "./setup.sh && .venv/bin/spinal run configs/demo.toml --overwrite" in lines
    assert "./setup.sh && .venv/bin/python -m pytest -q" in lines
    assert "./setup.sh && .venv/bin/python -m pytest -q" in (ROOT / ".ci" / "run").read_text()
    # a newcomer finds their own model within the first screen after the set-up commands
    setup = lines.index("./setup.sh && .venv/bin/python -m pytest -q")
    assert any("own model" in l.lower() for l in lines[setup:setup + 25]), "no pointer to running one's own model"


def test_no_document_points_at_the_specification_outside_the_repository():
    """Users never see the project's spec files; nothing tracked may name them or a path outside the clone."""
    offenders = []
    for path in tracked("*.md") + tracked("*.py") + tracked("*.toml"):
        if path.resolve() == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8")
        for bad in ("METHOD.md", "DESIGN.md", "STYLE.md", "../shared/", "/work/"):
            if bad in text:
                offenders.append(f"{path.relative_to(ROOT)}: {bad}")
    assert offenders == []


CITATION = re.compile(r"(?<![/\w])(README(?:\.md)?|docs/[\w/.-]+?\.md)(?: ?§(\d)(?:[–-]\d)?)?"
                      r"(?:(?=[,: (])[,:]? ?\(?[\"“']([^\"”'\n]{2,60})[\"”'])?")


def cited_parts(text: str) -> list[tuple[str, str | None, str | None]]:
    """(document, section number, quoted part) of each citation of a document in code."""
    return [(m.group(1), m.group(2), m.group(3)) for m in CITATION.finditer(text)]


def cited_file(doc: str, source: Path) -> Path:
    """docs/… from the repository root; a bare README is the citing file's own folder's, else the root's."""
    if doc.startswith("docs/"):
        return ROOT / doc
    return next((d / "README.md" for d in (source.parent, ROOT) if (d / "README.md").exists()), ROOT / "README.md")


def part_problems(doc: str, section: str | None, part: str | None, source: Path = ROOT / "x.py") -> str | None:
    path = cited_file(doc, source)
    if not path.exists():
        return f"{doc}: no such file"
    text = path.read_text(encoding="utf-8")
    heads = anchors(text)
    if section and not any(a.startswith(f"{section}-") for a in heads):
        return f"{doc} has no section §{section}"
    if part and slug(part) not in heads and not re.search(rf"\*\*{re.escape(part)}[.:]?\*\*", text) \
            and not re.search(rf"^#+ .*{re.escape(part)}", text, re.M):
        return f"{path.relative_to(ROOT)} has no heading or bold label {part!r}"
    return None


def test_what_the_code_cites_in_the_documentation_exists():
    """`docs/method.md §2, "Rank"`, `(docs/store-format.md, "Lossless")`, `README "…"` in code and configs: the file,
    the section and the named part are there."""
    problems, n = [], 0
    for path in tracked("*.py") + tracked("*.toml"):
        if path.resolve() == Path(__file__).resolve():
            continue
        for doc, section, part in cited_parts(path.read_text(encoding="utf-8")):
            if doc == "README" and not part:
                continue  # "the README" in prose, reference/README.md, …
            n += 1
            problem = part_problems(doc, section, part, path)
            if problem:
                problems.append(f"{path.relative_to(ROOT)}: {problem}")
    assert n >= 40, f"only {n} citations found: is the pattern still right?"
    assert problems == []


@pytest.mark.parametrize("citation, expected", [
    ('see (docs/method.md §2, "Rank")', None),
    ('(docs/method.md §6)', "no section §6"),
    ('(docs/store-format.md, "Lossless")', None),
    ('(docs/store-format.md, "Losless")', "no heading or bold label"),
    ('(docs/nowhere.md)', "no such file"),
    ('README "Store writes"', "no heading or bold label"),
    ('§4\'s wording (docs/method.md §4\'s "rule")', None),
])
def test_the_citation_checker_catches_what_it_should(citation, expected):
    (found,) = cited_parts(citation)
    problem = part_problems(*found)
    assert (problem is None) if expected is None else (expected in (problem or "")), problem
