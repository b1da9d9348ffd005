"""
The command line never echoes the key, validates every number, and reports an
unusable journal in one line with its own exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys

import anyio
import pytest
from pixelbyte_async._cli import EXIT_CODES, _parser, main
from pixelbyte_async._cli._options import _usd_to_micro_cents
from pixelbyte_async._cli._resume import _resume_command
from pixelbyte_async._cmdline import _count, _non_negative, _port, _positive
from pixelbyte_async._journal import Journal
from pixelbyte_async.testing import FakePixelByte, JobScript

from conftest import until, write_rows


SECRET = "pb_live_SECRET_never_echoed_7"
SLOW = JobScript(queue_seconds=0.05, processing_seconds=30)


def all_parsers(
    parser: argparse.ArgumentParser, name: str = "pixelbyte-async"
) -> list[tuple[str, argparse.ArgumentParser]]:
    """*parser* and every subparser under it, by their command names."""
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                found += all_parsers(sub, f"{name} {command}")
    return found


def parse(argv: list[str]) -> argparse.Namespace:
    return _parser().parse_args(argv)


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run *argv*, expect argparse's exit 2, return its (single-line) message."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_CODES["usage"]
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


# -- no abbreviations, no echoed key ------------------------------------------------------


def test_no_parser_accepts_abbreviations():
    """Every parser and subparser has allow_abbrev=False."""
    parsers = all_parsers(_parser())
    assert len(parsers) > 10
    assert [name for name, p in parsers if p.allow_abbrev] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "job_1", "--api-ke", SECRET],
        ["status", "job_1", "--api", SECRET],
        ["status", "job_1", f"--api-ke={SECRET}"],
        ["status", "job_1", f"--api={SECRET}"],
        ["--api-key", SECRET, "status", "job_1"],
        ["webhook", "verify", "body", "--api-key", SECRET],
        ["webhook", "verify", "body", f"--webhook-secre={SECRET}"],
        ["status", "job_1", "-k", SECRET],
    ],
    ids=[
        "api-ke",
        "api",
        "api-ke=",
        "api=",
        "before-command",
        "wrong-command",
        "ws=",
        "short",
    ],
)
def test_misplaced_or_abbreviated_secret_is_rejected_without_echo(argv, capsys):
    """--api-ke KEY is an unknown option (exit 2), and the key is not repeated."""
    err = usage_error(argv, capsys)
    assert SECRET not in err
    assert "***" in err


def test_unknown_positional_is_still_named(capsys):
    """Masking stops at option values: a stray word is shown so it can be fixed."""
    err = usage_error(["status", "job_1", "job_2"], capsys)
    assert "unrecognized arguments: job_2" in err


BATCH = ["batch", "rows.jsonl", "--out", "o"]


@pytest.mark.parametrize(
    "argv",
    [
        [*BATCH, "--api-key", SECRET],
        [*BATCH, f"--api-key={SECRET}"],
        [
            *BATCH,
            f"--api-key={SECRET}",
            "--max-cost",
            "0.7",
            "--concurrency",
            "3",
            "--journal=-odd name.sqlite",
            "--retry-failed",
            "--settle",
            "0",
            "--wait-timeout",
            "12.5",
            "--poll-interval",
            "0.25",
            "--base-url",
            "https://api.example",
            "--quiet",
        ],
        ["wait", "job_1", "--api-key", SECRET, "-o", "x.mp4", "--timeout", "30"],
        ["batch", "--out", "o", "--sandbox", "--time-scale", "5", "--", "-rows.jsonl"],
    ],
    ids=["space", "equals", "every-option", "wait", "dash-file"],
)
def test_resume_command_rebuilds_the_options_without_the_key(argv, monkeypatch):
    """The hint is rebuilt from the parsed options: same command, minus the key."""
    monkeypatch.setenv("PIXELBYTE_API_KEY", SECRET)
    args = parse(argv)
    hint = _resume_command(args)
    assert SECRET not in hint
    words = shlex.split(hint)
    assert words[0] == "pixelbyte-async"
    again = parse(words[1:])
    assert again.api_key is None
    assert {**vars(again), "api_key": args.api_key} == vars(args)


def test_transition_resumes_as_wait():
    """After Ctrl-C, transition says how to wait for its job, without the key."""
    args = parse(
        [
            "transition",
            "a.png",
            "b.png",
            f"--api-key={SECRET}",
            "--base-url",
            "https://api.example",
            "-o",
            "out.mp4",
            "--webhook-secret",
            "whsec_SECRET",
        ]
    )
    hint = _resume_command(args, "wait", job="job_1")
    assert "SECRET" not in hint
    again = parse(shlex.split(hint)[1:])
    assert (again.command, again.job, again.output, again.base_url) == (
        "wait",
        "job_1",
        "out.mp4",
        "https://api.example",
    )


@pytest.fixture(name="slow")
async def _slow(monkeypatch):
    """A fake API that accepts SECRET, whose jobs take 30 s."""
    async with FakePixelByte(api_key=SECRET, time_scale=1.0) as fake:
        fake.set_default_script(SLOW)
        monkeypatch.setenv("PIXELBYTE_BASE_URL", fake.url)
        monkeypatch.delenv("PIXELBYTE_API_KEY", raising=False)
        yield fake


@pytest.mark.anyio
@pytest.mark.parametrize(
    "key",
    [["--api-key", SECRET], [f"--api-key={SECRET}"], []],
    ids=["space", "equals", "environment"],
)
async def test_unfinished_batch_hint_never_shows_the_key(
    slow, key, tmp_path, capsys, monkeypatch
):
    """An unfinished batch prints how to resume; the key never appears."""
    if not key:
        monkeypatch.setenv("PIXELBYTE_API_KEY", SECRET)
    rows = write_rows(tmp_path / "rows.jsonl", 1)
    argv = [
        "batch",
        str(rows),
        "--out",
        str(tmp_path / "o"),
        *key,
        "--wait-timeout",
        "0.2",
        "--poll-interval",
        "0.05",
    ]
    code = await anyio.to_thread.run_sync(main, argv)
    captured = capsys.readouterr()
    assert code == EXIT_CODES["timeout"]
    assert SECRET not in captured.out + captured.err
    marker = "un the same command again to finish: "  # Run, or "... then run"
    (hint,) = [
        line.partition(marker)[2]
        for line in captured.out.splitlines()
        if marker in line
    ]
    if key:  # --api-key is never repeated, so the hint says where the key goes
        assert "PIXELBYTE_API_KEY" in captured.out
    again = parse(shlex.split(hint)[1:])
    assert (again.file, again.wait_timeout, again.api_key) == (str(rows), 0.2, None)


@pytest.mark.anyio
async def test_ctrl_c_hint_never_shows_the_key(tmp_path):
    """Ctrl-C of a batch given --api-key=KEY prints a resume hint without it."""
    rows = write_rows(tmp_path / "rows.jsonl", 2)
    async with FakePixelByte(api_key=SECRET, time_scale=1.0) as fake:
        fake.set_default_script(SLOW)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pixelbyte_async",
            "batch",
            str(rows),
            "--out",
            str(tmp_path / "o"),
            f"--api-key={SECRET}",
            "--base-url",
            fake.url,
            "--poll-interval",
            "0.05",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await until(lambda: len(fake.jobs) >= 2)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == EXIT_CODES["interrupted"], err.decode()
    assert b"Set PIXELBYTE_API_KEY to your key" in err
    assert b"then resume with: pixelbyte-async batch" in err
    assert SECRET.encode() not in out + err


# -- every number is checked --------------------------------------------------------------

VALIDATORS = {_positive, _non_negative, _count, _port, _usd_to_micro_cents}


def test_every_numeric_option_is_validated():
    """No option parses a number with bare int/float: each has a checked type."""
    unchecked = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, parser in all_parsers(_parser())
        for action in parser._actions
        if action.type in {int, float}
        or (
            isinstance(action.default, int | float)
            and not isinstance(action.default, bool)
            and action.type not in VALIDATORS
        )
    ]
    assert unchecked == []


@pytest.mark.parametrize(
    ("argv", "bad"),
    [
        (["transition", "a.png", "b.png", "--timeout"], "-5"),
        (["transition", "a.png", "b.png", "--timeout"], "0"),
        (["wait", "job_1", "--timeout"], "nan"),
        (["batch", "f.jsonl", "--out", "o", "--settle"], "-1"),
        (["batch", "f.jsonl", "--out", "o", "--wait-timeout"], "0"),
        (["batch", "f.jsonl", "--out", "o", "--concurrency"], "0"),
        (["batch", "f.jsonl", "--out", "o", "--max-cost"], "-1"),
        (["status", "job_1", "--time-scale"], "0"),
        (["status", "job_1", "--poll-interval"], "inf"),
        (["jobs", "--limit"], "-3"),
        (["webhook", "verify", "body", "--tolerance"], "-1"),
        (["webhook", "verify", "body", "--now"], "-1"),
        (["webhook", "listen", "--port"], "70000"),
        (["webhook", "listen", "--max-events"], "0"),
        (["sandbox", "--port"], "-1"),
        (["sandbox", "--time-scale"], "0"),
        (["sandbox", "--time-scale"], "fast"),
    ],
    ids=lambda v: v if isinstance(v, str) else v[-1],
)
def test_meaningless_numbers_are_usage_errors(argv, bad, capsys):
    """A negative, zero (where meaningless), non-finite or non-number value: exit 2."""
    err = usage_error([*argv, bad], capsys)
    assert f"argument {argv[-1]}" in err
    assert repr(bad) in err


def test_zero_is_fine_where_it_means_something():
    """Zero settle time, zero tolerance and port 0 (any free port) are accepted."""
    assert parse([*BATCH, "--settle", "0"]).settle == 0
    assert parse(["webhook", "verify", "b", "--tolerance", "0"]).tolerance == 0
    assert parse(["sandbox", "--port", "0"]).port == 0


# -- an unusable journal: exit 13, one line -----------------------------------------------


def journal_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == EXIT_CODES["journal"] == 13
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err


def test_emptied_journal_is_refused(tmp_path, capsys):
    """A journal truncated to 0 bytes stops the batch before anything is sent."""
    rows = write_rows(tmp_path / "rows.jsonl", 2)
    journal = tmp_path / "j.sqlite"
    journal.write_bytes(b"")
    argv = ["batch", str(rows), "--out", str(tmp_path / "o"), "--sandbox"]
    err = journal_error([*argv, "--journal", str(journal)], capsys)
    assert err.startswith(f"error: journal {journal} is empty")
    assert "--journal" in err
    assert journal.stat().st_size == 0
    assert not (tmp_path / "o").exists()


def test_unusable_journal_place_is_one_line(tmp_path, capsys):
    """A journal under a regular file is exit 13 with one line, not a traceback."""
    rows = write_rows(tmp_path / "rows.jsonl", 1)
    argv = ["batch", str(rows), "--out", str(tmp_path / "o"), "--sandbox"]
    err = journal_error([*argv, "--journal", str(rows / "j.sqlite")], capsys)
    assert err.startswith("error: cannot use journal")


def test_debug_shows_the_traceback(tmp_path, capsys):
    """--debug adds the traceback (with its cause) to the one-line error."""
    rows = write_rows(tmp_path / "rows.jsonl", 1)
    argv = ["batch", str(rows), "--out", str(tmp_path / "o"), "--sandbox"]
    argv += ["--journal", str(rows / "j.sqlite")]
    for debug in (["--debug", *argv], [*argv, "--debug"]):
        assert main(debug) == EXIT_CODES["journal"]
        err = capsys.readouterr().err
        assert "Traceback" in err
        assert "NotADirectoryError" in err
        assert err.strip().splitlines()[-1].startswith("error: cannot use journal")


@pytest.mark.anyio
async def test_second_run_through_a_symlink_is_refused(tmp_path, capsys):
    """While a run holds real.sqlite, a batch given a symlink to it exits 13."""
    rows = write_rows(tmp_path / "rows.jsonl", 2)
    real = tmp_path / "real.sqlite"
    link = tmp_path / "link.sqlite"
    held = await Journal.open(real)
    try:
        link.symlink_to(real)
        argv = ["batch", str(rows), "--out", str(tmp_path / "o"), "--sandbox"]
        code = await anyio.to_thread.run_sync(main, [*argv, "--journal", str(link)])
        err = capsys.readouterr().err
        assert code == EXIT_CODES["journal"]
        assert "in use by another run" in err
        assert await held.rows() == {}
    finally:
        await held.aclose()
