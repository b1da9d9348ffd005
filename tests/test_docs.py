"""
The docs stay true: what Sybil cannot run, and the facts the pages state.

Sybil (``docs/conftest.py``) runs every Python block of ``docs/`` against a
`FakePixelByte`; this module runs the testing guide's test files under pytest and
checks the pages' tables and diagrams against the code.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pixelbyte_async
import pixelbyte_async.redis
import pixelbyte_async.testing
import pixelbyte_async.webhooks
import pytest
from pixelbyte_async import PRICES, PollPolicy, RetryPolicy


DOCS = Path(__file__).parent.parent / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)

PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]

_BLOCK = re.compile(
    r"^```(?P<head>python|\{code-block\} python)\n"
    r"(?P<options>(?::[\w-]+:[^\n]*\n)*)\n?"
    r"(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


def python_blocks(page: Path) -> list[tuple[str, str]]:
    """Return ``(caption, code)`` of every Python block of *page*, skipped ones too."""
    blocks = []
    for match in _BLOCK.finditer(page.read_text()):
        caption = re.search(r"^:caption:\s*(\S+)", match["options"], re.MULTILINE)
        blocks.append((caption[1] if caption else "", match["code"]))
    return blocks


def table_rows(page: Path, first_header: str) -> list[list[str]]:
    """Return the cells of the table whose first header cell is *first_header*."""
    lines = page.read_text().splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |")
    )
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_pages_have_python_examples():
    """The docs exist and carry examples (a broken regex must not pass silently)."""
    assert {"index.md", "quickstart.md", "concepts.md", "testing.md"} <= {
        p.name for p in PAGES
    }
    assert sum(len(python_blocks(p)) for p in PAGES) > 30


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_python_block_compiles(page):
    """Every Python block parses, including those Sybil skips (the bot glue)."""
    for caption, code in python_blocks(page):
        if code.startswith(">>>"):
            continue  # a doctest: Sybil runs it
        compile(
            code,
            f"{page.name}:{caption}",
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )


def test_testing_guide_tests_pass_under_pytest(tmp_path):
    """The testing guide's app, conftest and test files pass, run as a user would."""
    files: dict[str, str] = {}
    for caption, code in python_blocks(DOCS / "testing.md"):
        if caption:
            files[caption] = files.get(caption, "") + code
    assert {"myapp.py", "tests/conftest.py", "tests/test_myapp.py"} <= set(files)
    for name, code in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(code)
    expected = sum(code.count("\nasync def test_") for code in files.values())

    result = subprocess.run(  # noqa: S603 -- our own interpreter and files
        [*PYTEST, "tests"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{expected} passed" in result.stdout


@pytest.mark.parametrize(
    ("page", "module"),
    [
        ("api.md", pixelbyte_async),
        ("api-testing.md", pixelbyte_async.testing),
        ("api-webhooks.md", pixelbyte_async.webhooks),
        ("api-redis.md", pixelbyte_async.redis),
    ],
)
def test_every_public_name_is_in_the_reference(page, module):
    """Each name in a public module's __all__ has an entry in its reference page."""
    text = (DOCS / page).read_text()
    documented = set(
        re.findall(
            r"^\.\. (?:auto(?:class|exception|function|data)|py:data):: (\w+)",
            text,
            re.MULTILINE,
        )
    )
    assert sorted(set(module.__all__) - documented) == []
    assert sorted(documented - set(module.__all__)) == []


def test_kling_price_table_matches_the_sdk():
    """The Kling O1 guide's price table is the SDK's price table."""
    rows = table_rows(DOCS / "kling-o1.md", "Duration")
    standard = PRICES[pixelbyte_async.KLING_O1_STANDARD_SEF]
    pro = PRICES[pixelbyte_async.KLING_O1_PRO_SEF]
    assert [row[0] for row in rows] == [f"{s} s" for s in range(3, 11)]
    for row in rows:
        seconds = int(row[0].removesuffix(" s"))
        std = standard.cost({"duration": str(seconds)})
        pr = pro.cost({"duration": str(seconds)})
        assert row[1:] == [f"{std:,}", f"{std / 1e6:.2f}", f"{pr:,}", f"{pr / 1e6:.2f}"]


@pytest.mark.parametrize("cls", [RetryPolicy, PollPolicy])
def test_policy_tables_match_the_defaults(cls):
    """The errors page lists every field of the policy, with its real default."""
    rows = table_rows(DOCS / "errors.md", f"`{cls.__name__}`")
    documented = {
        row[0].strip("`"): ast.literal_eval(row[1].strip("`")) for row in rows
    }
    actual = {field.name: field.default for field in attrs.fields(cls)}
    assert documented == actual


def test_polling_diagram_shows_the_real_schedule():
    """
    The polling diagram's GETs are those of the default policy for a 240 s job:
    the first of its model, and once eight jobs of the model ended at their ETA.
    """
    from pixelbyte_async import EtaBias

    policy = PollPolicy(jitter=0)

    def schedule(bias: EtaBias) -> list[float]:
        window = bias.window("kling", start=0, eta=240)
        now, gets = 0.0, []
        while now < 240:
            now += policy.next_delay(
                now=now,
                eta=window.expected,
                previous=None,
                earliest=window.earliest,
                latest=window.latest,
            )
            gets.append(now)
        return gets

    first = schedule(EtaBias())
    known = EtaBias()
    for _ in range(8):
        known.learn("kling", created=0, eta=240, ended=240)
    rows = [first, schedule(known)]
    svg = (DOCS / "_static" / "polling-240s.svg").read_text()
    drawn = [
        [float(x) for x in re.findall(rf'<circle cx="([\d.]+)" cy="{y}" r="5"/>', svg)]
        for y in (84, 160)
    ]
    for gets, xs in zip(rows, drawn, strict=True):
        assert xs == pytest.approx([40 + 2.2 * t for t in gets], abs=0.25)
        assert f": {len(gets)} GETs</text>" in svg
    concepts = (DOCS / "concepts.md").read_text()
    assert len(rows[1]) == 5
    assert "that is five GETs" in concepts
    assert len(first) == 12
    assert "the first job of a model costs twelve" in concepts


def test_bot_recipes_share_one_sdk_function():
    """The Discord and Telegram recipes show the same PixelByte part, word for word."""

    def sdk_part(page: str) -> str:
        return next(
            code
            for _, code in python_blocks(DOCS / "recipes" / page)
            if "async def make_transition(" in code
        )

    assert sdk_part("discord.md") == sdk_part("telegram.md")
