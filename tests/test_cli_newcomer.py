"""
What a newcomer ran into on the command line (issue 13, findings 3, 4, 5, 7, 8).

Every failure is one line with its documented exit code, found before anything is
paid for; hints run as printed; progress is numbered as rows finish; every option
says what it does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import socket
import sys
from collections.abc import Iterator
from importlib.resources import files

import anyio
import pytest
from pixelbyte_async import KlingO1StartEndFrame, testing
from pixelbyte_async._cli import EXIT_CODES, _parser, main
from pixelbyte_async.testing import FakePixelByte, JobScript

from conftest import bound_client, until, write_rows


KEY = "pb_live_SECRET_newcomer_key_3"
MP4 = (files("pixelbyte_async") / "_data" / "sample.mp4").read_bytes()
FAST = JobScript(queue_seconds=0.05, processing_seconds=0.15)
SLOW = JobScript(queue_seconds=0.05, processing_seconds=30)
URLS = ["https://e.x/a.jpg", "https://e.x/b.jpg"]
POLL = ["--poll-interval", "0.02"]


@pytest.fixture(name="live")
async def _live(monkeypatch):
    """A fake API in real time, reached through the environment."""
    async with FakePixelByte(api_key=KEY, time_scale=1.0) as fake:
        fake.set_default_script(FAST)
        monkeypatch.setenv("PIXELBYTE_BASE_URL", fake.url)
        monkeypatch.setenv("PIXELBYTE_API_KEY", KEY)
        yield fake


async def cli(*argv: str) -> int:
    """Run main() in a worker thread (it calls asyncio.run) while the fake serves."""
    return await anyio.to_thread.run_sync(main, [*argv])


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single line on stderr (and nothing on stdout)."""
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@contextlib.contextmanager
def busy_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def all_parsers(
    parser: argparse.ArgumentParser, name: str = "pixelbyte-async"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                found += all_parsers(sub, f"{name} {command}")
    return found


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings}


def subcommand(*names: str) -> argparse.ArgumentParser:
    found = dict(all_parsers(_parser()))
    return found[" ".join(["pixelbyte-async", *names])]


# -- finding 3: a Ctrl-C hint runs as printed ----------------------------------------------


async def interrupt_when(proc: asyncio.subprocess.Process, marker: bytes) -> bytes:
    """Read stderr until *marker*, send Ctrl-C, return all of stderr."""
    assert proc.stderr is not None
    seen = b""
    async with asyncio.timeout(20):
        while marker not in seen:
            line = await proc.stderr.readline()
            assert line, seen.decode()
            seen += line
    proc.send_signal(signal.SIGINT)
    rest, _ = await asyncio.gather(proc.stderr.read(), proc.wait())
    return seen + rest


@pytest.mark.anyio
async def test_sandbox_ctrl_c_says_the_job_ends_with_the_process(tmp_path):
    """transition --sandbox + Ctrl-C: no 'wait JOB' hint that would 404 in a new fake."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELBYTE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pixelbyte_async",
        "transition",
        "--sandbox",
        "--time-scale",
        "1",
        "-o",
        str(tmp_path / "t.mp4"),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    err = (await interrupt_when(proc, b"job_")).decode()
    assert proc.returncode == EXIT_CODES["interrupted"], err
    assert "pixelbyte-async wait" not in err
    assert "ends with this process" in err
    assert "nothing was charged" in err


@pytest.mark.anyio
async def test_ctrl_c_with_api_key_says_to_set_the_variable(tmp_path):
    """Given --api-key, the hint says to set PIXELBYTE_API_KEY; then it runs as printed."""
    out = tmp_path / "t.mp4"
    async with FakePixelByte(api_key=KEY, time_scale=1.0) as fake:
        fake.set_default_script(SLOW)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELBYTE_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pixelbyte_async",
            "transition",
            *URLS,
            f"--api-key={KEY}",
            "--base-url",
            fake.url,
            "-o",
            str(out),
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        err = (await interrupt_when(proc, b"job_")).decode()
        assert proc.returncode == EXIT_CODES["interrupted"], err
        assert KEY not in err
        (line,) = [each for each in err.splitlines() if "Stopped waiting" in each]
        assert "Set PIXELBYTE_API_KEY to your key" in line
        hint = line.split("resume with: ", 1)[1]
        fake.advance(60)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PIXELBYTE_API_KEY", KEY)
            assert await cli(*shlex.split(hint)[1:]) == 0
    assert out.read_bytes() == MP4
    assert fake.count("POST", "/v1/jobs/submit") == 1


def test_unfinished_sandbox_batch_is_not_told_to_run_again(tmp_path, capsys):
    """A --sandbox batch forgets its jobs on exit: it says so instead of 'run again'."""
    rows = write_rows(tmp_path / "rows.jsonl", 1)
    argv = ["batch", str(rows), "--out", str(tmp_path / "o"), "--sandbox"]
    code = main([*argv, "--time-scale", "1", "--wait-timeout", "0.2", *POLL])
    out = capsys.readouterr().out
    assert code == EXIT_CODES["timeout"]
    assert "Run the same command again" not in out
    assert "ends with this process" in out


# -- finding 4: one line, before anything is paid for --------------------------------------


@pytest.mark.parametrize("value", ["127.0.0.1:8795", "localhost", "ftp://x.example"])
def test_base_url_without_scheme_is_a_usage_error(value, capsys):
    """--base-url 127.0.0.1:8795: exit 2, one line saying what a base URL looks like."""
    with pytest.raises(SystemExit) as info:
        main(["status", "job_1", "--base-url", value])
    assert info.value.code == EXIT_CODES["usage"]
    line = one_line(capsys)
    assert "argument --base-url" in line
    assert "https://" in line


def test_base_url_from_the_environment_is_checked_too(capsys, monkeypatch):
    """PIXELBYTE_BASE_URL=127.0.0.1:8795: exit 2, one line naming the variable."""
    monkeypatch.setenv("PIXELBYTE_BASE_URL", "127.0.0.1:8795")
    monkeypatch.setenv("PIXELBYTE_API_KEY", KEY)
    for argv in (["models"], ["estimate", "--local"], ["status", "job_1"]):
        assert main(argv) == EXIT_CODES["usage"]
        line = one_line(capsys)
        assert "PIXELBYTE_BASE_URL" in line
        assert "http://127.0.0.1:8795" in line  # what was probably meant


def test_sandbox_port_in_use_is_one_line(capsys):
    """'sandbox' and python -m pixelbyte_async.testing on a busy port: one line, 15."""
    assert EXIT_CODES["cannot_listen"] == 15
    with busy_port() as port:
        for run in (main, testing.main):
            argv = ["--port", str(port)]
            code = run(["sandbox", *argv] if run is main else argv)
            assert code == EXIT_CODES["cannot_listen"]
            line = one_line(capsys)
            assert f"127.0.0.1:{port}" in line
            assert "--port" in line


def test_webhook_listen_port_in_use_is_one_line(capsys):
    """webhook listen on a busy port: one line, exit 15."""
    with busy_port() as port:
        argv = ["webhook", "listen", "--port", str(port), "--webhook-secret", "whsec_x"]
        assert main(argv) == EXIT_CODES["cannot_listen"]
    line = one_line(capsys)
    assert f"127.0.0.1:{port}" in line


@pytest.mark.anyio
async def test_transition_listen_on_a_busy_port_submits_nothing(live, tmp_path, capsys):
    """transition --listen on a busy port: exit 15 before the (paid) submit."""
    with busy_port() as port:
        code = await cli(
            "transition",
            *URLS,
            "--listen",
            f"127.0.0.1:{port}",
            "--public-url",
            "https://hooks.example/pb",
            "--webhook-secret",
            "whsec_x",
            "-o",
            str(tmp_path / "t.mp4"),
        )
    assert code == EXIT_CODES["cannot_listen"]
    assert "--listen" in one_line(capsys)
    assert live.count("POST", "/v1/jobs/submit") == 0


def test_sandbox_transition_listen_on_a_busy_port(tmp_path, capsys):
    """Also with --sandbox: one line, exit 15."""
    with busy_port() as port:
        argv = ["transition", "--sandbox", "--listen", str(port)]
        assert main([*argv, "-o", str(tmp_path / "t.mp4")]) == 15
    assert "--listen" in one_line(capsys)


def test_listen_address_is_checked_when_parsed(capsys):
    """--listen x:y is a usage error (exit 2), not found after parsing."""
    with pytest.raises(SystemExit) as info:
        main(["transition", *URLS, "--listen", "host:port"])
    assert info.value.code == EXIT_CODES["usage"]
    assert "argument --listen" in one_line(capsys)


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["directory", "under-a-file"])
async def test_transition_output_is_checked_before_the_submit(
    live, tmp_path, capsys, where
):
    """-o naming a directory (or a path under a file): exit 3, one line, no submit."""
    target = tmp_path if where == "directory" else tmp_path / "rows" / "t.mp4"
    (tmp_path / "rows").write_text("")
    code = await cli("transition", *URLS, "-o", str(target), *POLL)
    assert code == EXIT_CODES["validation"]
    assert str(target) in one_line(capsys)
    assert live.count("POST", "/v1/jobs/submit") == 0


@pytest.mark.anyio
async def test_wait_output_is_checked_before_waiting(live, tmp_path, capsys):
    """wait -o DIR: exit 3 at once, without even looking the job up."""
    code = await cli("wait", "job_1", "-o", str(tmp_path), *POLL)
    assert code == EXIT_CODES["validation"]
    assert "-o" in one_line(capsys)
    assert live.requests == []


@pytest.mark.anyio
async def test_batch_out_is_checked_before_any_submit(live, tmp_path, capsys):
    """batch --out naming a file: exit 3, one line, nothing submitted, no journal."""
    rows = write_rows(tmp_path / "rows.jsonl", 2)
    code = await cli("batch", str(rows), "--out", str(rows), *POLL)
    assert code == EXIT_CODES["validation"]
    assert "--out" in one_line(capsys)
    assert live.count("POST", "/v1/jobs/submit") == 0
    assert not (tmp_path / "rows.jsonl.journal.sqlite").exists()


@pytest.mark.anyio
async def test_batch_journal_place_is_checked_before_any_submit(live, tmp_path, capsys):
    """A journal that cannot be made: exit 13, one line, nothing submitted."""
    rows = write_rows(tmp_path / "rows.jsonl", 2)
    argv = ["batch", str(rows), "--out", str(tmp_path / "o"), *POLL]
    code = await cli(*argv, "--journal", str(rows / "j.sqlite"))
    assert code == EXIT_CODES["journal"]
    assert one_line(capsys).startswith("error: cannot use journal")
    assert live.count("POST", "/v1/jobs/submit") == 0


@pytest.mark.anyio
async def test_output_lost_after_the_job_is_one_line_with_the_way_out(
    live, tmp_path, capsys, monkeypatch
):
    """If -o still cannot be written after the job (a race): one line, how to fetch it."""
    monkeypatch.setattr(
        "pixelbyte_async._cli._transition_command._check_output_file", lambda *_: None
    )
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")  # a file where -o's folder should be
    out = blocker / "x.mp4"
    code = await cli("transition", *URLS, "-o", str(out), "--quiet", *POLL)
    assert code == EXIT_CODES["validation"]
    line = one_line(capsys)
    (job,) = live.jobs
    assert f"Download it with: pixelbyte-async wait {job} " in line
    assert line.endswith(f" --output {job}.mp4")
    assert "paid" in line


# -- finding 5: no key, no traffic -----------------------------------------------------------

NEEDS_KEY = [
    ["transition", *URLS],
    ["batch", "ROWS", "--out", "OUT"],
    ["batch", "ROWS", "--out", "OUT", "--dry-run"],
    ["status", "job_1"],
    ["wait", "job_1"],
    ["cancel", "job_1"],
    ["estimate", "--duration", "5"],
    ["jobs"],
    ["audit", "--since", "1h"],
]


@pytest.mark.anyio
@pytest.mark.parametrize("argv", NEEDS_KEY, ids=lambda a: "-".join(a[:1] + a[-1:]))
async def test_no_key_is_exit_4_before_anything(
    live, argv, tmp_path, capsys, monkeypatch
):
    """No key: one line naming PIXELBYTE_API_KEY and --api-key, exit 4, no request."""
    monkeypatch.delenv("PIXELBYTE_API_KEY")
    rows = str(write_rows(tmp_path / "rows.jsonl", 1))
    argv = [
        rows if a == "ROWS" else str(tmp_path / "o") if a == "OUT" else a for a in argv
    ]
    assert await cli(*argv) == EXIT_CODES["auth"]
    line = one_line(capsys)
    assert "PIXELBYTE_API_KEY" in line
    assert "--api-key" in line
    assert "PixelByte(" not in line
    assert live.requests == []


@pytest.mark.anyio
async def test_no_key_json_error(live, capsys, monkeypatch):
    """With --json the missing key is also a JSON error object with exit code 4."""
    monkeypatch.delenv("PIXELBYTE_API_KEY")
    assert await cli("jobs", "--json") == EXIT_CODES["auth"]
    assert '"exitCode": 4' in capsys.readouterr().out


@pytest.mark.anyio
async def test_a_pasted_key_with_its_newline_works(live, capsys, monkeypatch):
    """Issue 21 finding 10: ``$(cat key.txt)`` keeps a newline; it is stripped."""
    monkeypatch.setenv("PIXELBYTE_API_KEY", KEY + "\n")
    assert await cli("jobs", "--json") == 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.anyio
@pytest.mark.parametrize("broken", [KEY[:9] + " " + KEY[9:], KEY + "\x01"])
async def test_a_key_with_inner_whitespace_is_exit_4_unshown(
    live, broken, capsys, monkeypatch
):
    """A key with a space or a control character inside: one line, exit 4, no request."""
    monkeypatch.setenv("PIXELBYTE_API_KEY", broken)
    assert await cli("jobs") == EXIT_CODES["auth"]
    line = one_line(capsys)
    assert "PIXELBYTE_API_KEY" in line
    assert KEY[9:] not in line
    assert live.requests == []


@pytest.mark.anyio
async def test_public_and_local_commands_need_no_key(live, capsys, monkeypatch):
    """models (the public catalogue) and estimate --local work without a key."""
    monkeypatch.delenv("PIXELBYTE_API_KEY")
    assert await cli("models") == 0
    assert await cli("estimate", "--duration", "5", "--local") == 0
    assert "$0.25" in capsys.readouterr().out


# -- finding 7: progress in completion order; wait shows the cost ---------------------------


@pytest.mark.anyio
async def test_batch_lines_are_numbered_as_rows_finish(live, tmp_path, capsys):
    """Rows finishing r2, r0, r1 print [1/3] r2, [2/3] r0, [3/3] r1."""
    live.set_default_script(SLOW)
    rows = write_rows(tmp_path / "rows.jsonl", 3)
    out = tmp_path / "o"
    run = asyncio.ensure_future(cli("batch", str(rows), "--out", str(out), *POLL))
    await until(lambda: len(live.jobs) == 3)
    job_of = {job.input["prompt"]: job_id for job_id, job in live.jobs.items()}
    for row in ("r2", "r0", "r1"):
        live.complete_now(job_of[f"row {row[1]}"])
        await until(lambda row=row: (out / f"{row}.mp4").exists())
        await asyncio.sleep(0.05)  # the row's line is printed right after its file
    assert await run == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "/3]" in line]
    assert [line.split()[0] for line in lines] == ["[1/3]", "[2/3]", "[3/3]"]
    assert [line.split()[2] for line in lines] == ["r2", "r0", "r1"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("envelope", "shown"), [("wrapped", "cost $0.25"), ("flat", "cost unknown")]
)
async def test_wait_shows_the_cost_the_api_gives(live, envelope, shown, capsys):
    """wait on a completed job shows its cost, or 'cost unknown' if the API has none."""
    live.envelope = envelope
    async with bound_client(live) as pb:
        job = await pb.submit(
            KlingO1StartEndFrame(image_url=URLS[0], end_image_url=URLS[1])
        )
    live.complete_now(job.id)
    assert await cli("wait", job.id, *POLL) == 0
    captured = capsys.readouterr()
    assert "cost ?" not in captured.err + captured.out
    assert shown in captured.err
    assert shown in captured.out


# -- finding 8: every command and option explains itself ------------------------------------


def test_every_command_and_option_has_help():
    """Each subcommand has a description; each option and positional has help text."""
    parsers = all_parsers(_parser())
    assert len(parsers) > 10
    missing = [name for name, p in parsers[1:] if not (p.description or "").strip()]
    missing += [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, parser in parsers
        for action in parser._actions
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_sandbox_takes_the_options_of_the_testing_module():
    """'sandbox' and python -m pixelbyte_async.testing share options and defaults."""
    sandbox = subcommand("sandbox")
    standalone = testing._parser()
    assert options(sandbox) == options(standalone)
    assert "--allow-http-webhooks" in options(sandbox)
    # --debug's default is the top-level parser's, where 'sandbox' is a subcommand
    defaults = {**vars(sandbox.parse_args([])), "debug": False}
    assert defaults == vars(standalone.parse_args([]))
    common = subcommand("status").parse_args(["job_1"])
    assert sandbox.parse_args([]).time_scale == common.time_scale == 60


def test_sandbox_forwards_every_option(monkeypatch):
    """'sandbox --allow-http-webhooks --no-auth' reach the fake server."""
    seen: list[argparse.Namespace] = []

    async def serve(args, *_):
        seen.append(args)

    monkeypatch.setattr("pixelbyte_async._fake._process._serve_sandbox", serve)
    argv = ["--port", "0", "--allow-http-webhooks", "--no-auth", "--time-scale", "5"]
    assert main(["sandbox", *argv]) == 0
    assert testing.main(argv) == 0
    first, second = seen
    assert vars(first) | {"command": None, "debug": False} == vars(second) | {
        "command": None,
        "debug": False,
    }
    assert (first.allow_http_webhooks, first.no_auth, first.time_scale) == (
        True,
        True,
        5.0,
    )


@pytest.mark.parametrize(
    "command",
    [
        "transition",
        "batch",
        "status",
        "wait",
        "cancel",
        "estimate",
        "jobs",
        "models",
        "audit",
    ],
)
def test_connection_options_are_where_the_readme_says(command):
    """--sandbox/--json/--base-url/--api-key on every API command (README)."""
    assert {"--sandbox", "--json", "--base-url", "--api-key"} <= options(
        subcommand(command)
    )


def test_webhook_commands_take_json_but_no_api_options():
    """webhook verify/listen take --json, not the connection options (README)."""
    for name in ("verify", "listen"):
        found = options(subcommand("webhook", name))
        assert "--json" in found
        assert not {"--sandbox", "--base-url", "--api-key"} & found


# -- found on the way: local frames, unreadable files ----------------------------------------


def test_transition_reads_local_frames(tmp_path, capsys):
    """transition a.png b.png uploads the files (the README promises local images)."""
    frame = tmp_path / "a.png"
    frame.write_bytes(_demo_png())
    argv = ["transition", str(frame), str(frame), "--sandbox", "--time-scale", "10000"]
    assert main([*argv, "-o", str(tmp_path / "t.mp4"), "--json"]) == 0
    assert '"status": "completed"' in capsys.readouterr().out


def test_missing_local_frame_is_one_line(tmp_path, capsys):
    """A START that is neither a URL nor a file: exit 3, one line, before anything."""
    argv = ["transition", str(tmp_path / "nope.png"), URLS[1], "--sandbox"]
    assert main(argv) == EXIT_CODES["validation"]
    assert "nope.png" in one_line(capsys)


def test_unreadable_webhook_body_is_one_line(tmp_path, capsys):
    """webhook verify of a missing file: exit 3, one line (no traceback)."""
    argv = ["webhook", "verify", str(tmp_path / "nope"), "--webhook-secret", "whsec_x"]
    assert main(argv) == EXIT_CODES["validation"]
    assert "cannot read BODY" in one_line(capsys)


def test_any_local_os_error_is_one_line(capsys, monkeypatch):
    """An OSError nobody foresaw is still one line (exit 1); --debug shows it."""
    from pixelbyte_async import _cli

    async def broken(args, out, err):
        raise PermissionError(13, "Permission denied", "/somewhere")

    monkeypatch.setitem(_cli._COMMANDS, "models", broken)
    assert main(["models"]) == EXIT_CODES["error"]
    assert "Permission denied" in one_line(capsys)
    assert main(["models", "--debug"]) == EXIT_CODES["error"]
    assert "PermissionError" in capsys.readouterr().err


def _demo_png() -> bytes:
    from pixelbyte_async._cli._transition_command import DEMO_START, _png

    return _png(16, 9, *DEMO_START)
