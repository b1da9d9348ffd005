"""Task runner: `nox -s tests`, `lint`, `mypy`, `docs`, `build`, `bench`."""

from __future__ import annotations

import shutil

import nox


nox.options.default_venv_backend = (
    "uv|virtualenv" if shutil.which("uv") else "virtualenv"
)
nox.options.sessions = ["tests", "lint", "mypy"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


@nox.session
def tests(session: nox.Session) -> None:
    """
    Run the test suite (pytest exit 5, 'no tests ran', fails the session).

    On two workers (pytest-xdist): the suite spends much of its time waiting on
    real processes and sockets, so both cores of a small machine stay busy
    (about 2 minutes there, against 3.3 on one).  ``--dist loadfile`` keeps each
    file on one worker: a docs page's examples are one session, run in order.
    """
    session.install("-e", ".[cli]", *_group("tests"), *_group("recipes"))
    session.run(
        "pytest",
        *(
            session.posargs
            or ["-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile"]
        ),
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff format --check and ruff check."""
    session.install(*_group("lint"))
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session
def mypy(session: nox.Session) -> None:
    """mypy --strict on the package and tests/typing."""
    session.install("-e", ".[cli]", *_group("typing"))
    session.run("mypy", "--strict")


# What the docs build installs: autodoc imports every public module, the Redis hub's
# included (so the `redis` extra), and Sphinx with its extensions (the `docs` group).
# .readthedocs.yaml installs the same for the hosted docs.
DOCS_EXTRAS = "cli,redis"


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs in docs/_build/html; any warning fails (sphinx -W -n)."""
    session.install("-e", f".[{DOCS_EXTRAS}]", *_group("docs"))
    session.run(
        "sphinx-build",
        *(session.posargs or ["-W", "-n", "--keep-going", "-b", "html"]),
        "docs",
        "docs/_build/html",
    )


@nox.session
def build(session: nox.Session) -> None:
    """Build sdist and wheel."""
    session.install("build")
    session.run("python", "-m", "build", "--outdir", "dist")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmark scripts in bench/ (ratios measured side by side)."""
    session.install("-e", ".")
    for script in sorted(__import__("pathlib").Path("bench").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)
