"""The documentation: the mkdocs site builds with --strict, and no link or cited page is missing.

``mkdocs build --strict`` (configuration in mkdocs.yml) fails on a link to a missing page or
anchor and on a page left out of the navigation; the tests below check that it does, on a
copy of the docs with one such mistake. Building needs no network (mkdocs.yml: no fonts, the
search index is built locally). About a second per build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# [text](target) links; images too. Targets with a scheme or only an anchor are not files.
LINK = re.compile(r"\]\(([^)\s]+)\)")
# A docs page named in code or configuration, e.g. "see docs/zoo.md".
CITED_PAGE = re.compile(r"\bdocs/[\w.-]+\.md\b")
CITING = ("tfedge", "device", "scripts", "tests", "setup.cfg", "pyproject.toml", "mkdocs.yml")


def build_site(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_docs(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", root / "docs")
    shutil.copy(ROOT / "mkdocs.yml", root / "mkdocs.yml")
    return root


def test_mkdocs_is_installed():
    found = subprocess.run([sys.executable, "-m", "mkdocs", "--version"], capture_output=True)
    assert found.returncode == 0, "mkdocs is missing: pip install -e '.[test]' (scripts/dev.sh)"


def test_site_builds_strict(tmp_path):
    result = build_site(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    for page in ("quickstart", "recipes", "python-api", "troubleshooting"):
        assert (tmp_path / "site" / page / "index.html").is_file()


@pytest.mark.parametrize(
    "mistake, message",
    [
        ("\n[a page](no-such-page.md)\n", "no-such-page.md"),
        ("\n[an anchor](recipes.md#no-such-section)\n", "no-such-section"),
    ],
)
def test_a_broken_link_fails_the_build(tmp_path, mistake, message):
    root = copy_docs(tmp_path)
    with open(root / "docs" / "install.md", "a") as f:
        f.write(mistake)
    result = build_site(root, tmp_path / "site")
    assert result.returncode != 0 and message in result.stderr


def test_a_page_missing_from_the_nav_fails_the_build(tmp_path):
    root = copy_docs(tmp_path)
    (root / "docs" / "forgotten.md").write_text("# Forgotten\n")
    result = build_site(root, tmp_path / "site")
    assert result.returncode != 0 and "forgotten.md" in result.stderr


def relative_links(markdown: str) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)  # code blocks are not links
    return [
        t.split("#")[0]
        for t in LINK.findall(text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")
    ]


def test_every_relative_link_of_the_readme_exists():
    links = relative_links((ROOT / "README.md").read_text())
    assert links, "the README links to the docs"
    missing = [t for t in links if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_relative_links_finds_what_it_should():
    found = relative_links("[a](guide/a.md#x) [b](https://x.org/b.md) [c](#c)\n```\n[d](d.md)\n```")
    assert found == ["guide/a.md"]


def test_every_docs_page_cited_in_the_code_exists():
    cited: dict[str, set[str]] = {}
    for name in CITING:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            if f.suffix not in {".py", ".sh", ".cfg", ".toml", ".yml", ".yaml", ".md", ""}:
                continue
            if "__pycache__" in f.parts or "build" in f.relative_to(ROOT).parts[:2]:
                continue
            for page in CITED_PAGE.findall(f.read_text(errors="replace")):
                cited.setdefault(page, set()).add(str(f.relative_to(ROOT)))
    missing = {page: sorted(where) for page, where in cited.items() if not (ROOT / page).exists()}
    assert not missing, f"pages cited but missing: {missing}"
