"""The public surface: __all__ matches, __version__ matches metadata, py.typed ships."""

from __future__ import annotations

import importlib.metadata
import types
from pathlib import Path

import pixelbyte_async
import pytest


def test_all_is_sorted_and_complete():
    """__all__ lists exactly the public names the package defines, sorted."""
    public = {
        name
        for name, value in vars(pixelbyte_async).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    public -= {"annotations", "Any", "TYPE_CHECKING"}
    public |= set(pixelbyte_async._LAZY)
    assert sorted(public) == sorted(pixelbyte_async.__all__)
    assert list(pixelbyte_async.__all__) == isort_order(pixelbyte_async.__all__)


def test_batches_load_on_first_use():
    """`import pixelbyte_async` leaves batches and SQLite out; their names resolve."""
    import subprocess
    import sys

    code = (
        "import sys, pixelbyte_async as p\n"
        "lazy = ('pixelbyte_async._batch', 'pixelbyte_async._journal', 'sqlite3')\n"
        "assert not [m for m in lazy if m in sys.modules], sys.modules.keys()\n"
        "for name in p._LAZY: assert getattr(p, name) is not None\n"
        "from pixelbyte_async import *\n"
        "assert run_batch is p.run_batch\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # noqa: S603 -- our own code


def isort_order(names):
    """ruff's RUF022 order: CONSTANTS, then Classes, then functions."""
    return sorted(names, key=lambda n: (not n.isupper(), not n[:1].isupper(), n))


def test_every_public_name_is_documented():
    """Every exported class and function has a docstring."""
    for name in pixelbyte_async.__all__:
        obj = getattr(pixelbyte_async, name)
        if callable(obj):
            assert obj.__doc__, name


def test_version_matches_metadata():
    """__version__ is read lazily from the installed metadata."""
    assert importlib.metadata.version("pixelbyte-async") == pixelbyte_async.__version__
    with pytest.raises(AttributeError):
        pixelbyte_async.does_not_exist  # noqa: B018


def test_py_typed_ships():
    """The package is marked typed."""
    assert (Path(pixelbyte_async.__file__).parent / "py.typed").exists()


def test_testing_module_is_public():
    """pixelbyte_async.testing exports FakePixelByte."""
    from pixelbyte_async import testing

    assert "FakePixelByte" in testing.__all__
    assert isort_order(testing.__all__) == list(testing.__all__)


def test_webhooks_module_is_public():
    """pixelbyte_async.webhooks exports verify, sign and the receiver types."""
    from pixelbyte_async import webhooks

    assert {"verify", "sign", "WebhookReceiver", "WebhookServer"} <= set(
        webhooks.__all__
    )
    assert isort_order(webhooks.__all__) == list(webhooks.__all__)
    for name in webhooks.__all__:
        obj = getattr(webhooks, name)
        if callable(obj):
            assert obj.__doc__, name


def test_metadata_says_license_and_where_things_are():
    """pip show names the license; the index page links docs, source, changelog."""
    meta = importlib.metadata.metadata("pixelbyte-async")
    assert meta["License"] == "MIT"
    assert "License :: OSI Approved :: MIT License" in meta.get_all("Classifier")
    urls = {u.split(",", 1)[0] for u in meta.get_all("Project-URL") or []}
    assert {"Documentation", "Source", "Changelog", "Issues"} <= urls


def test_license_file_ships():
    """The LICENSE is in the repo and in the sdist's include list (wheels add it)."""
    root = Path(__file__).parent.parent
    assert "MIT License" in (root / "LICENSE").read_text()
    assert '"LICENSE"' in (root / "pyproject.toml").read_text()


def test_readme_has_a_pip_install_line_for_the_index_page():
    """
    The README is PyPI's description: it must not only offer clone commands, and
    while no release exists it says plainly that the index install does not work yet.
    """
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "pip install 'pixelbyte-async[cli]'" in readme
    if ".dev" in pixelbyte_async.__version__:
        assert "**Not on PyPI yet.**" in readme
        assert "does not work yet" in readme


def test_documentation_url_is_the_hosted_site():
    """The index page's Documentation link is the built site, not MyST sources."""
    meta = importlib.metadata.metadata("pixelbyte-async")
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert urls["Documentation"] == "https://pixelbyte-async.readthedocs.io/"
