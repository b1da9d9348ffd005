"""
What a newcomer still met on the command line (issue 25, part 3).

Usage mistakes are usage errors (exit 2), errors speak the command line's names
(START, END) and never a private class name, a generic row for a known model is
checked like a transition row, `models` is a table, and the sandbox's virtual
seconds are never shown as real ones.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pixelbyte_async import JobInfo, JobStatus
from pixelbyte_async._cli import EXIT_CODES, main
from pixelbyte_async._cli import _transition_command as transition


URLS = ["https://e.x/a.jpg", "https://e.x/b.jpg"]
KLING = "kling-plus/kling-o1-standard/start-end-frame-to-video"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """A key and an API nobody answers: nothing here may reach it."""
    monkeypatch.setenv("PIXELBYTE_API_KEY", "pb_test_round3")
    monkeypatch.setenv("PIXELBYTE_BASE_URL", "http://127.0.0.1:9")


def err_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err.strip().splitlines()


@pytest.mark.parametrize("argv", [["transition"], ["transition", URLS[0]]])
def test_missing_frames_are_a_usage_error(argv, capsys):
    assert main(argv) == EXIT_CODES["usage"]
    (line,) = err_lines(capsys)
    assert "START" in line


def test_json_errors_never_name_a_private_class(capsys, monkeypatch):
    from pixelbyte_async import _cli

    async def broken(args, out, err):
        raise PermissionError(13, "Permission denied", "/somewhere")

    monkeypatch.setitem(_cli._COMMANDS, "models", broken)
    assert main(["models", "--json"]) == EXIT_CODES["error"]
    error = json.loads(capsys.readouterr().out)["error"]
    assert not error["type"].startswith("_")
    assert error["type"] == "CLIError"


def test_a_big_local_frame_is_named_as_on_the_command_line(tmp_path, capsys):
    """Checked before the 'Submitting' line, in the CLI's words (START), exit 3."""
    big = tmp_path / "big.png"
    with big.open("wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n")
        file.truncate(11 * 1024 * 1024)
    argv = ["transition", str(big), URLS[1], "-o", str(tmp_path / "o.mp4")]
    assert main(argv) == EXIT_CODES["validation"]
    (line,) = err_lines(capsys)
    assert line.startswith("error: START: big.png")
    assert "image_url" not in line


def test_a_generic_row_for_a_known_model_is_checked_before_sending(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps(
            {
                "id": "a",
                "model": KLING,
                "input": {
                    "image_url": URLS[0],
                    "end_image_url": URLS[1],
                    "duration": "99",
                },
            }
        )
        + "\n"
        + json.dumps({"id": "b", "model": KLING, "input": {"image_url": "x"}})
        + "\n"
    )
    argv = ["batch", str(rows), "--out", str(tmp_path / "out"), "--dry-run"]
    assert main(argv) == EXIT_CODES["validation"]
    text = "\n".join(err_lines(capsys))
    assert "rows.jsonl:1" in text
    assert "duration" in text
    assert "rows.jsonl:2" in text


def test_models_is_a_table(capsys, monkeypatch):
    from pixelbyte_async._cli import _job_commands

    assert main(["models", "--sandbox"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["SLUG", "PRICE"]
    assert any(line.startswith(KLING) and "$0.05/s" in line for line in out[1:])
    assert "{" not in "\n".join(out)
    del _job_commands, monkeypatch


def info(status: JobStatus, *, eta_in: float | None, now: datetime) -> JobInfo:
    return JobInfo(
        id="job_1",
        status=status,
        estimated_completion_time=None
        if eta_in is None
        else now + timedelta(seconds=eta_in),
        created_at=now - timedelta(seconds=245),
        completed_at=now if status.is_terminal else None,
    )


def test_sandbox_progress_shows_real_seconds(monkeypatch):
    """A sandbox at x20: 240 virtual seconds are 12 real ones, and shown as such."""
    now = datetime(2026, 12, 7, tzinfo=UTC)
    running = info(JobStatus.PROCESSING, eta_in=240, now=now)
    text = transition._progress_text(
        running, elapsed=6.0, expected=running_expected(running, now), scale=20.0
    )
    assert "6s / ~12s" in text
    assert "sandbox x20" in text


def running_expected(job: JobInfo, now: datetime) -> float:
    assert job.estimated_completion_time is not None
    return (job.estimated_completion_time - now).total_seconds()


def test_a_finished_job_shows_no_eta(monkeypatch):
    now = datetime(2026, 12, 7, tzinfo=UTC)
    done = info(JobStatus.COMPLETED, eta_in=None, now=now)
    text = transition._progress_text(done, elapsed=0.0, expected=240.0, scale=1.0)
    assert "~240s" not in text
    assert "completed" in text
    assert "took 245s" in text
