"""The README's code runs: the testing example verbatim, the quickstart on the fake."""

from __future__ import annotations

import re
from pathlib import Path

import pixelbyte_async
import pytest

from conftest import bound_client


pytestmark = pytest.mark.anyio

README = (Path(__file__).parent.parent / "README.md").read_text()
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


async def test_testing_example_runs_verbatim():
    """The FakePixelByte example in the README runs as written."""
    (block,) = [b for b in BLOCKS if "FakePixelByte" in b]
    namespace: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 -- our own README
    await namespace["test_my_app"]()  # type: ignore[operator]


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
