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

# The guide's tests run on anyio's plugin; pytest-asyncio (installed for the pytest
# plugin's tests) would turn `-W error` on its own configuration warning.
PYTEST = [
    *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"),
    *("-p", "no:asyncio"),
]

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


ROOT = DOCS.parent


def load_simple_yaml(text: str) -> object:
    """
    Read the YAML subset ``.readthedocs.yaml`` is written in (PyYAML may be absent).

    Block mappings and sequences (indented under their key), plain, quoted and
    boolean scalars, and comments.
    """
    lines = [
        [len(line) - len(line.lstrip()), line.strip()]
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]

    def scalar(text: str) -> object:
        if text[:1] in "\"'":
            return text[1:-1]
        if text in {"true", "false"}:
            return text == "true"
        return int(text) if text.isdigit() else text

    def block(i: int, indent: int) -> tuple[object, int]:
        if lines[i][1].startswith("- "):
            items = []
            while i < len(lines) and lines[i][0] == indent:
                rest = lines[i][1][2:]
                if ": " in rest or rest.endswith(":"):  # an item that is a mapping
                    lines[i] = [indent + 2, rest]
                    item, i = block(i, indent + 2)
                else:
                    item, i = scalar(rest), i + 1
                items.append(item)
            return items, i
        mapping = {}
        while i < len(lines) and lines[i][0] == indent:
            key, _, rest = lines[i][1].partition(":")
            i += 1
            if rest.strip():
                mapping[key] = scalar(rest.strip())
            else:
                mapping[key], i = block(i, lines[i][0])
        return mapping, i

    return block(0, 0)[0]


def nox_docs_extras() -> set[str]:
    """The extras noxfile.py's docs session installs (its DOCS_EXTRAS)."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    (value,) = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["DOCS_EXTRAS"]
        and isinstance(node.value, ast.Constant)
    ]
    (docs,) = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "docs"
    ]
    source = ast.unparse(docs)
    assert "DOCS_EXTRAS" in source
    assert "_group('docs')" in source
    return set(value.split(","))


def test_read_the_docs_config_builds_these_docs():
    """
    ``.readthedocs.yaml`` is valid (version 2), uses docs/conf.py, fails on warnings
    and installs what `nox -s docs` installs: extras and groups pyproject defines.
    """
    import tomllib

    text = (ROOT / ".readthedocs.yaml").read_text()
    config = load_simple_yaml(text)
    try:
        import yaml
    except ImportError:
        pass
    else:
        assert yaml.safe_load(text) == config
    assert isinstance(config, dict)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())

    assert config["version"] == 2
    assert config["build"]["os"] in {"ubuntu-22.04", "ubuntu-24.04"}
    assert config["build"]["tools"]["python"] == "3.12"
    assert config["sphinx"]["configuration"] == "docs/conf.py"
    assert (ROOT / config["sphinx"]["configuration"]).is_file()
    assert config["sphinx"]["fail_on_warning"] is True
    (install,) = config["python"]["install"]
    assert (install["method"], install["path"]) == ("pip", ".")
    extras = set(install["extra_requirements"])
    assert extras <= set(pyproject["project"]["optional-dependencies"])
    assert "redis" in extras  # autodoc imports pixelbyte_async.redis
    assert extras == nox_docs_extras()
    groups = [
        command.split("--group", 1)[1].split()[0]
        for command in config["build"]["jobs"]["post_install"]
        if "--group" in command
    ]
    assert groups == ["docs"]
    assert set(groups) <= set(pyproject["dependency-groups"])


def test_ci_builds_the_docs_after_the_tests():
    """.ci/run runs the tests, then a Sphinx build of the docs where warnings fail."""
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "set -euo pipefail" in commands
    tests = commands.index("nox -s tests")
    (docs,) = [c for c in commands if c.startswith("nox -s docs")]
    assert commands.index(docs) > tests
    assert {"-W", "-n", "-E"} <= set(docs.split())
    # pytest's exit 5 ("no tests ran") must stay a failure of the tests session.
    assert "success_codes" not in (ROOT / "noxfile.py").read_text()


def test_quickstart_blocks_fit_the_page():
    """No line of the quickstart's code and output blocks scrolls sideways."""
    text = (DOCS / "quickstart.md").read_text()
    blocks = re.findall(r"^ *```\w*\n(.*?)^ *```$", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 5
    wide = [line for block in blocks for line in block.splitlines() if len(line) > 88]
    assert wide == []


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (pixelbyte_async.KlingO1StartEndFrame, "duration: int = 5, pro: bool = False)"),
        (pixelbyte_async.ClientConfig, "retry: RetryPolicy = RetryPolicy()"),
        (pixelbyte_async.JobInfo, "status: JobStatus = JobStatus.UNKNOWN"),
        (PollPolicy, "min_interval: float = 1.0"),
    ],
    ids=lambda v: getattr(v, "__name__", "sig"),
)
def test_api_pages_show_attrs_fields_as_declared(cls, expected):
    """
    An attrs class's signature in the API pages shows each field's declared type
    and real default: not a converter's parameter type (``duration: object``) nor
    the generated ``__init__``'s source (``attr_dict['duration'].default``).
    """
    pytest.importorskip("sphinx")
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    assert spec is not None
    assert spec.loader is not None
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)

    signature, _ = conf._attrs_signature(
        None, "class", cls.__name__, cls, None, "(*, ...)", None
    )

    shown = re.sub(r"~[\w.]+\.", "", signature)  # as the page shows it: short names
    assert expected in shown
    assert "attr_dict" not in signature
    assert "object" not in signature


def test_skipped_examples_are_reported_at_their_line_in_the_page():
    """Issue 25: skip reasons named pytest's own files (in .nox/...), not the page."""
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "-p", "no:asyncio", "docs/testing.md::line:46,column:1"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )  # fmt: skip
    skipped = [line for line in ran.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped, ran.stdout + ran.stderr
    assert all(" docs/testing.md:46:" in line for line in skipped), skipped
