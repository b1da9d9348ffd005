"""The README's code runs: the testing example verbatim, the quickstart on the fake."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import pixelbyte_async
import pytest

from conftest import bound_client


pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)


def test_readme_starts_with_the_two_commands():
    """README.md opens with exactly the two commands: the sandbox run and the tests."""
    first = re.search(r"```bash\n(.*?)```", README, re.DOTALL)
    assert first is not None
    lines = first.group(1).strip().splitlines()
    assert lines == [
        "pip install -e '.[cli]' && pixelbyte-async transition --sandbox -o transition.mp4",
        "pip install nox && nox -s tests",
    ]
    assert (
        "pip install nox && nox -s tests"
        in (Path(__file__).parent.parent / ".ci" / "run").read_text()
    )


def test_testing_example_passes_under_pytest_as_pasted(tmp_path):
    """
    The FakePixelByte example, saved as a test file, passes under a plain ``pytest``.

    No conftest and no options: the SDK's pytest plugin (its ``pytest11`` entry
    point) gives the fixtures and anyio's plugin runs the test, as for a user who
    pasted it into a project of theirs.
    """
    (block,) = [b for b in BLOCKS if "FakePixelByte" in b or "pixelbyte_fake" in b]
    (tmp_path / "test_my_app.py").write_text(block)

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_my_app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


async def test_quickstart_runs_against_the_fake(fake, tmp_path, monkeypatch):
    """The quickstart runs unchanged but for the client it is given (bound to the fake)."""
    block = next(b for b in BLOCKS if "asyncio.run(main())" in b)
    block = block.replace("asyncio.run(main())", "")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 -- our own README
    namespace["PixelByte"] = lambda: bound_client(fake)
    await namespace["main"]()  # type: ignore[operator]
    assert (tmp_path / "out.mp4").stat().st_size > 0
    assert pixelbyte_async.PixelByte is not namespace["PixelByte"]


def test_every_python_block_compiles():
    """Every Python example in the README is valid Python."""
    assert len(BLOCKS) >= 3
    for block in BLOCKS:
        compile(block, "README.md", "exec")


async def test_webhook_example_runs_against_the_fake(tmp_path, monkeypatch):
    """The README's webhook example runs, pointed at a fake and a local port."""
    from pixelbyte_async import KlingO1StartEndFrame, PixelByte
    from pixelbyte_async.testing import FakePixelByte
    from pixelbyte_async.webhooks import WebhookServer

    block = next(b for b in BLOCKS if "WebhookServer(" in b)
    monkeypatch.chdir(tmp_path)
    async with FakePixelByte(
        time_scale=2000, allow_http_webhooks=True, auto_webhooks=True
    ) as fake:
        namespace: dict[str, object] = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 -- our own README
        namespace["WebhookServer"] = lambda *_a, **_k: WebhookServer(
            fake.webhook_secret, port=0, clock=fake.clock
        )
        namespace["PixelByte"] = lambda **kw: PixelByte(
            api_key=fake.api_key, base_url=fake.url, clock=fake.clock, **kw
        )
        request = KlingO1StartEndFrame(
            image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
        )
        await namespace["main"](request)  # type: ignore[operator]
        assert fake.count("GET", "/v1/jobs/*") <= 1
    assert (tmp_path / "out.mp4").stat().st_size > 0


async def test_batch_example_runs(fake, tmp_path, monkeypatch, capsys):
    """The README's batch example runs against the fake and prints one line per input."""
    from pixelbyte_async import KlingO1StartEndFrame, PixelByte

    block = next(b for b in BLOCKS if "run_batch(" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {
        "PixelByte": PixelByte,
        "KlingO1StartEndFrame": KlingO1StartEndFrame,
    }
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 -- our own README
    inputs = [
        KlingO1StartEndFrame(
            image_url="https://e.x/a.jpg",
            end_image_url="https://e.x/b.jpg",
            prompt=str(i),
        )
        for i in range(3)
    ]
    async with bound_client(fake) as pb:
        await namespace["render_all"](pb, inputs)  # type: ignore[operator]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(" completed " in line for line in lines)
    videos = tmp_path / "videos"
    assert len(list(videos.glob("*.mp4"))) == 3
    assert len(list(videos.glob("*.poster.jpg"))) == 3
    assert (videos / "report.html").is_file()


def test_readme_links_work_on_a_package_index_page():
    """
    Every link is absolute (a relative ``docs/...`` link breaks on PyPI), and each
    link into the docs names a page that exists, and an anchor of that page.
    """
    links = re.findall(r"\]\(([^)\s]+)\)|<(https?://[^>\s]+)>", README)
    targets = [a or b for a, b in links]
    assert targets
    assert [t for t in targets if not t.startswith("https://")] == []

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    hosted = pyproject["project"]["urls"]["Documentation"].rstrip("/")
    to_docs = [t for t in targets if t.startswith(hosted)]
    assert len(to_docs) >= 4
    for target in to_docs:
        page, _, anchor = target.removeprefix(hosted).partition("#")
        assert page.startswith("/en/latest/"), target
        name = page.removeprefix("/en/latest/").removesuffix(".html") or "index"
        source = (ROOT / "docs" / f"{name}.md").read_text()
        if anchor:
            headings = {
                re.sub(r"[^a-z0-9]+", "-", h.lower()).strip("-")
                for h in re.findall(r"^#+ (.+)$", source, re.MULTILINE)
            }
            labels = set(re.findall(r"^\(([\w-]+)\)=$", source, re.MULTILINE))
            assert anchor in headings | labels, target


def test_readme_does_not_give_kling_a_webhook_url():
    """Only ``pb.submit(..., webhook_url=)`` takes a webhook URL, not the input type."""
    from pixelbyte_async import KlingO1StartEndFrame

    assert "webhook_url" not in {f.name for f in attrs.fields(KlingO1StartEndFrame)}
    for block in BLOCKS:
        for call in re.findall(r"KlingO1StartEndFrame\((.*?)\n\s*\)", block, re.DOTALL):
            assert "webhook" not in call
    prose = re.sub(r"```.*?```", "", README, flags=re.DOTALL)
    assert "`pb.submit(request, webhook_url=...)` checks" in prose
