"""The README and the docs cannot drift from the code (issue 35).

- Every `autodetr_*` command named in README.md (and in the user pages of docs/ this project writes) is a
  console script of pyproject.toml, and every flag named with it is an option in that command's `--help`.
  A flag is "named with" a command when it follows the command on a line of a code block, inside the same
  inline code span, or in later inline code spans of the same paragraph, list item or table row (so the
  README's "most useful options" list, `- `autodetr_train`: `--objective`, `--epochs` ...`, is checked).
- Every relative link and image in README.md and docs/*.md points to an existing file, and a `#anchor`
  into a Markdown page names one of its headings (GitHub's slugs) or an `<a id=...>` in it.
"""
from __future__ import annotations

import argparse
import importlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: Pages whose commands and flags are checked: the README and the user pages that come with it.
COMMAND_PAGES = [README] + [ROOT / "docs" / name for name in ("dataset_format.md", "configuration.md", "benchmarks.md")]
#: Pages whose links are checked.
LINK_PAGES = [README] + sorted((ROOT / "docs").glob("*.md"))

COMMAND = re.compile(r"(?<![\w./$-])autodetr_([a-z][a-z0-9_]*)(?![\w./-])")
FLAG = re.compile(r"^(--?[A-Za-z][A-Za-z0-9_-]*)")
SEPARATORS = {"&&", "||", ";", "|", "&"}
INLINE_CODE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\s(?:href|src)=["']([^"']+)["']""", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"""<a\b[^>]*?\s(?:id|name)=["']([^"']+)["']""", re.IGNORECASE)
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")


@dataclass(frozen=True)
class Mention:
    """A flag named with a command, and where."""

    command: str
    flag: str
    where: str


# ---------------------------------------------------------------------------------------------------------
# Reading commands and flags out of Markdown


def _walk(tokens: list[str], current: str | None, where: str, out: list[Mention], commands: set[str]) -> str | None:
    """Attribute each flag token to the command before it; returns the command in force at the end.

    A shell separator ends a command (outside a `#` comment, whose flags belong to the line's command)."""
    comment = False
    for token in tokens:
        if token.startswith("#"):
            comment = True
            continue
        found = COMMAND.search(token)
        if found:
            current = found.group(1)
            commands.add(current)
            continue
        if not comment and (token in SEPARATORS or token.endswith(";")):
            current = None
            continue
        flag = FLAG.match(token)
        if flag and current is not None:
            out.append(Mention(current, flag.group(1), where))
    return current


def _units(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(code block lines, prose units) with their line numbers. A prose unit is a paragraph, a list item,
    a table row or a heading, its lines joined by spaces."""
    code, units = [], []
    unit: list[str] = []
    start = 0
    fence: str | None = None

    def close() -> None:
        if unit:
            units.append((start, " ".join(unit)))
            unit.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            else:
                code.append((number, line))
            continue
        if stripped.startswith(("```", "~~~")):
            close()
            fence = stripped[:3]
            continue
        if not stripped:
            close()
            continue
        if LIST_ITEM.match(line) or stripped.startswith(("|", "#")) or (unit and unit[-1].lstrip().startswith(("|", "#"))):
            close()
        if not unit:
            start = number
        unit.append(line)
    close()
    return code, units


def mentions_in_markdown(text: str, name: str) -> tuple[list[Mention], set[str]]:
    """Every (command, flag) a Markdown text names, and every `autodetr_*` command it names in code."""
    out: list[Mention] = []
    commands: set[str] = set()
    code, units = _units(text)
    for number, line in code:
        _walk(line.split(), None, f"{name}:{number}", out, commands)
    for number, unit in units:
        current: str | None = None
        for span in INLINE_CODE.findall(unit):
            tokens = span.replace("\\|", "|").split()
            if not tokens:
                continue
            starts_with_flag = bool(FLAG.match(tokens[0]))
            found_here: set[str] = set()
            last = _walk(tokens, current if starts_with_flag else None, f"{name}:{number}", out, found_here)
            commands |= found_here
            if found_here:
                current = last
            elif not starts_with_flag and any(FLAG.match(t) for t in tokens):
                current = None   # another tool's command line, e.g. `python benchmarks/... --minutes 20`
    return out, commands


# ---------------------------------------------------------------------------------------------------------
# The commands' parsers


def console_scripts() -> dict[str, str]:
    """`autodetr_*` console script -> "module:function" from pyproject.toml."""
    with open(ROOT / "pyproject.toml", "rb") as handle:
        scripts = tomllib.load(handle)["project"]["scripts"]
    return {name: target for name, target in scripts.items() if name.startswith("autodetr_")}


def parser_of(script: str, target: str) -> argparse.ArgumentParser:
    """The argparse parser of a console script: the module's `*parser` function whose prog is the script."""
    module = importlib.import_module(target.split(":")[0])
    found = []
    for attribute in dir(module):
        function = getattr(module, attribute)
        if attribute.endswith("parser") and callable(function) and getattr(function, "__module__", None) == module.__name__:
            parser = function()
            if isinstance(parser, argparse.ArgumentParser) and parser.prog == script:
                found.append(parser)
    assert len(found) == 1, f"{script}: expected one parser function in {module.__name__}, found {len(found)}"
    return found[0]


def visible_options(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings `--help` shows (hidden options left out), each checked against the help text."""
    text = parser.format_help()
    options = {option for action in parser._actions if action.help != argparse.SUPPRESS for option in action.option_strings}
    return {option for option in options if re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text)}


@pytest.fixture(scope="module")
def options_per_command() -> dict[str, set[str]]:
    return {name[len("autodetr_"):]: visible_options(parser_of(name, target)) for name, target in console_scripts().items()}


def problems_with(mentions: list[Mention], commands: set[str], options: dict[str, set[str]]) -> list[str]:
    problems = [f"autodetr_{command}: no such console script in pyproject.toml" for command in sorted(commands - set(options))]
    for mention in mentions:
        if mention.command in options and mention.flag not in options[mention.command]:
            problems.append(f"{mention.where}: autodetr_{mention.command} {mention.flag}: not in its --help")
    return problems


def test_every_readme_command_and_flag_is_in_its_help(options_per_command: dict[str, set[str]]) -> None:
    mentions, commands = mentions_in_markdown(README.read_text(encoding="utf-8"), "README.md")
    # The check reads real content: the README names most commands and a good many of their flags.
    assert {"plan_and_preprocess", "train", "predict", "evaluate", "demo"} <= commands
    assert len({(m.command, m.flag) for m in mentions}) >= 30
    assert problems_with(mentions, commands, options_per_command) == []


@pytest.mark.parametrize("page", COMMAND_PAGES[1:], ids=lambda p: p.name)
def test_every_command_and_flag_in_the_user_docs_is_in_its_help(page: Path, options_per_command: dict[str, set[str]]) -> None:
    mentions, commands = mentions_in_markdown(page.read_text(encoding="utf-8"), f"docs/{page.name}")
    assert problems_with(mentions, commands, options_per_command) == []


def test_a_flag_or_command_that_does_not_exist_is_reported(options_per_command: dict[str, set[str]]) -> None:
    text = (
        "```bash\nautodetr_predict -i x -o y --no-such-flag   # comment: --tta is hidden\n```\n\n"
        "- `autodetr_train`: `--objective`, `--bogus-option`\n"
        "- `autodetr_nonexistent --help`\n\n"
        "`python benchmarks/bench_training.py --heldout 12` is another tool's flag, so is `torchrun --nproc_per_node 4`.\n"
    )
    mentions, commands = mentions_in_markdown(text, "example.md")
    problems = problems_with(mentions, commands, options_per_command)
    assert problems == [
        "autodetr_nonexistent: no such console script in pyproject.toml",
        "example.md:2: autodetr_predict --no-such-flag: not in its --help",
        "example.md:2: autodetr_predict --tta: not in its --help",
        "example.md:5: autodetr_train --bogus-option: not in its --help",
    ]


# ---------------------------------------------------------------------------------------------------------
# Links


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces -> hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    """The anchors a Markdown page defines: heading slugs (repeats get -1, -2, ...) and `<a id=...>`."""
    text = page.read_text(encoding="utf-8")
    anchors: set[str] = set(HTML_ANCHOR.findall(text))
    counts: dict[str, int] = {}
    fence = False
    for line in text.splitlines():
        if line.strip().startswith(("```", "~~~")):
            fence = not fence
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and not fence:
            base = slug(heading.group(1))
            anchors.add(base if base not in counts else f"{base}-{counts[base]}")
            counts[base] = counts.get(base, 0) + 1
    return anchors


def link_targets(page: Path) -> list[tuple[int, str]]:
    """Relative link and image targets of a page (outside code), with their line numbers."""
    targets = []
    fence = False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip().startswith(("```", "~~~")):
            fence = not fence
            continue
        if fence:
            continue
        prose = INLINE_CODE.sub("", line)
        for target in LINK.findall(prose) + HTML_LINK.findall(prose):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):   # http:, https:, mailto: ...
                targets.append((number, target))
    return targets


def broken_links(page: Path) -> list[str]:
    problems = []
    for number, target in link_targets(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / unquote(path_part)).resolve() if path_part else page
        where = f"{page.relative_to(ROOT) if page.is_relative_to(ROOT) else page.name}:{number}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: {resolved} does not exist")
        elif anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors_of(resolved):
            problems.append(f"{where}: no heading or anchor '{anchor}' in {resolved.name}")
    return problems


@pytest.mark.parametrize("page", LINK_PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_readme_links_its_picture_and_the_docs() -> None:
    targets = {target for _, target in link_targets(README)}
    assert "docs/images/demo_phantom_test_000.png" in targets
    assert {"docs/dataset_format.md", "docs/configuration.md", "docs/benchmarks.md"} <= targets


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# A heading: with `code`\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-heading-with-code) [ok](other.md#twice-1) [web](https://example.org/x.md)\n"
        "[missing](missing.md) ![picture](images/none.png)\n"
        "[bad anchor](other.md#nowhere) `[in code](ignored.md)`\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        f"page.md:2: missing.md: {tmp_path / 'missing.md'} does not exist",
        f"page.md:2: images/none.png: {tmp_path / 'images' / 'none.png'} does not exist",
        "page.md:3: other.md#nowhere: no heading or anchor 'nowhere' in other.md",
    ]


# ---------------------------------------------------------------------------------------------------------
# Tables


def table_cells(row: str) -> int:
    """How many cells a Markdown table row has (pipes inside inline code or escaped do not separate cells)."""
    prose = INLINE_CODE.sub("code", row.replace("\\|", "")).strip()
    return len(prose.strip("|").split("|"))


def ragged_table_rows(page: Path) -> list[str]:
    """Rows of a page's tables whose cell count differs from their header's (a figure in the wrong column)."""
    problems, header, fence = [], None, False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip().startswith(("```", "~~~")):
            fence = not fence
        if fence or not line.lstrip().startswith("|"):
            header = None
            continue
        if header is None:
            header = table_cells(line)
        elif table_cells(line) != header:
            problems.append(f"{page.name}:{number}: {table_cells(line)} cells, the header has {header}")
    return problems


@pytest.mark.parametrize("page", LINK_PAGES, ids=lambda p: p.name)
def test_every_table_row_has_its_headers_cells(page: Path) -> None:
    assert ragged_table_rows(page) == []


def test_a_ragged_table_row_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("| a | b | `x | y` |\n| --- | --- | --- |\n| 1 | 2 | 3 |\n| 1 | 2 3 |\n\n| c |\n| --- |\n| 4 |\n",
                    encoding="utf-8")
    assert ragged_table_rows(page) == ["page.md:4: 2 cells, the header has 3"]


def test_readme_is_short() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) < 150
