"""The pixelbyte-async command line: in-process main() and a real kill -9 resume."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from importlib.resources import files

import anyio
import pytest
from pixelbyte_async import KlingO1StartEndFrame
from pixelbyte_async._cli import EXIT_CODES, main
from pixelbyte_async._journal import read_rows
from pixelbyte_async.testing import FakePixelByte, Fault, JobScript

from conftest import bound_client, subprocess_env, until, write_rows


SLUG = "kling-plus/kling-o1-standard/start-end-frame-to-video"
MP4 = (files("pixelbyte_async") / "_data" / "sample.mp4").read_bytes()
KEY = "pb_live_SECRET_cli_key_42"
FAST = JobScript(queue_seconds=0.05, processing_seconds=0.15)


@pytest.fixture(name="live")
async def _live(monkeypatch):
    """A fake API running in real time, reached through the environment."""
    async with FakePixelByte(api_key=KEY, time_scale=1.0) as fake:
        fake.set_default_script(FAST)
        monkeypatch.setenv("PIXELBYTE_BASE_URL", fake.url)
        monkeypatch.setenv("PIXELBYTE_API_KEY", KEY)
        yield fake


async def cli(*argv):
    """Run main() in a worker thread (it calls asyncio.run) while the fake serves."""
    return await anyio.to_thread.run_sync(main, [*argv])


def test_exit_codes_are_distinct_and_stable():
    """The old codes keep their values; every family has its own code."""
    assert {
        k: EXIT_CODES[k]
        for k in (
            "ok",
            "error",
            "usage",
            "validation",
            "auth",
            "balance",
            "job_failed",
            "timeout",
            "unavailable",
            "ambiguous_submit",
            "interrupted",
        )
    } == {
        "ok": 0,
        "error": 1,
        "usage": 2,
        "validation": 3,
        "auth": 4,
        "balance": 5,
        "job_failed": 6,
        "timeout": 7,
        "unavailable": 8,
        "ambiguous_submit": 9,
        "interrupted": 130,
    }
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)
    assert (EXIT_CODES["budget"], EXIT_CODES["needs_attention"]) == (10, 11)


@pytest.mark.anyio
async def test_batch_runs_and_resumes(live, tmp_path, capsys):
    """batch downloads every row, journals next to the file, and a re-run redoes nothing."""
    rows = write_rows(tmp_path / "rows.jsonl", 4)
    out = tmp_path / "out"
    argv = ["batch", str(rows), "--out", str(out), "--json", "--poll-interval", "0.02"]
    assert await cli(*argv, "--concurrency", "2") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["ok"], summary["completed"], summary["costMicroCents"]) == (
        True,
        4,
        1_000_000,
    )
    assert sorted(p.name for p in out.iterdir()) == [
        *(f"r{n}{suffix}" for n in range(4) for suffix in (".mp4", ".poster.jpg")),
        "report.html",
    ]
    assert summary["report"] == str(out / "report.html")
    assert (out / "r0.mp4").read_bytes() == MP4
    journal = tmp_path / "rows.jsonl.journal.sqlite"
    assert summary["journal"] == str(journal)
    assert {r.state for r in read_rows(journal).values()} == {"downloaded"}
    assert await cli(*argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert all(item["resumed"] for item in again["items"])
    assert live.count("POST", "/v1/jobs/submit") == 4
    assert live.ledger.double_charged() == []


@pytest.mark.anyio
async def test_batch_human_output(live, tmp_path, capsys):
    """Without --json: a line per job on stderr, the summary table on stdout."""
    rows = write_rows(tmp_path / "rows.csv", 0)
    rows.write_text(
        "id,start,end,prompt,duration,pro\n"
        "a,https://e.x/1.jpg,https://e.x/2.jpg,hello,3,\n"
        "b,https://e.x/3.jpg,https://e.x/4.jpg,,4,true\n"
    )
    code = await cli(
        "batch", str(rows), "--out", str(tmp_path / "o"), "--poll-interval", "0.02"
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "Batch summary" in captured.out
    assert "completed" in captured.out
    assert "$0.43" in captured.out  # 3 × 50,000 + 4 × 70,000
    assert "[1/2] completed" in captured.err
    assert "a.mp4" in captured.err


@pytest.mark.anyio
async def test_batch_with_rich(live, tmp_path, capsys, monkeypatch):
    """With rich (forced, as on a terminal): a progress bar and a summary table."""
    pytest.importorskip("rich")
    monkeypatch.setenv("PIXELBYTE_FORCE_RICH", "1")
    rows = write_rows(tmp_path / "rows.jsonl", 2)
    code = await cli(
        "batch", str(rows), "--out", str(tmp_path / "o"), "--poll-interval", "0.02"
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "Batch summary" in captured.out
    assert "2/2" in captured.err
    assert "completed" in captured.err


@pytest.mark.anyio
async def test_invalid_rows_are_all_reported_before_anything_is_sent(
    live, tmp_path, capsys
):
    """Every bad row is listed as file:line; exit code 3; no request at all."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"id": "a", "start": "missing.png", "end": "https://e.x/b.jpg"}\n'
        '{"id": "b", "start": "https://e.x/a.jpg", "end": "https://e.x/b.jpg"}\n'
        '{"id": "c", "start": "https://e.x/a.jpg", "end": "https://e.x/b.jpg", "duration": 2}\n'
        "{oops\n"
    )
    assert await cli("batch", str(rows), "--out", str(tmp_path / "o")) == 3
    err = capsys.readouterr().err
    assert f"{rows}:1: start:" in err
    assert f"{rows}:3: duration" in err
    assert f"{rows}:4: not valid JSON" in err
    assert f"{rows}:2" not in err
    assert await cli("batch", str(rows), "--out", str(tmp_path / "o"), "--json") == 3
    error = json.loads(capsys.readouterr().out)["error"]
    assert [p["where"] for p in error["problems"]] == [f"{rows}:{n}" for n in (1, 3, 4)]
    assert live.requests == []
    assert not (tmp_path / "rows.jsonl.journal.sqlite").exists()


@pytest.mark.anyio
async def test_budget_refusal_and_dry_run(live, tmp_path, capsys):
    """Over --max-cost: exit 10, nothing sent; --dry-run shows the plan."""
    rows = write_rows(tmp_path / "rows.jsonl", 3)  # 3 × $0.25
    base = ["batch", str(rows), "--out", str(tmp_path / "o")]
    assert await cli(*base, "--max-cost", "0.70") == EXIT_CODES["budget"]
    assert "over the limit of $0.70" in capsys.readouterr().err
    assert await cli(*base, "--dry-run", "--max-cost", "$1") == 0
    plan_text = capsys.readouterr().out
    assert "3 to submit" in plan_text
    assert "total $0.75 (limit $1.00: within budget)" in plan_text
    assert await cli(*base, "--dry-run", "--max-cost", "0.5", "--json") == 10
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert (plan["totalMicroCents"], plan["withinBudget"]) == (750_000, False)
    assert live.count("POST", "/v1/jobs/submit") == 0


def test_max_cost_must_be_an_amount(capsys):
    """A malformed --max-cost is a usage error from argparse."""
    with pytest.raises(SystemExit) as info:
        main(["batch", "rows.jsonl", "--out", "o", "--max-cost", "lots"])
    assert info.value.code == EXIT_CODES["usage"]
    assert "US$" in capsys.readouterr().err


@pytest.mark.anyio
async def test_needs_attention_has_its_own_exit_code(live, tmp_path, capsys):
    """An ambiguous submit with two candidates exits 11 and names both jobs."""
    # Another submitter's job appears half a second into the lost submit's window.
    foreign = live.submit_elsewhere(
        SLUG,
        {"image_url": "https://e.x/x.jpg", "end_image_url": "https://e.x/y.jpg"},
        after=0.5,
    )
    live.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")
    rows = write_rows(tmp_path / "rows.jsonl", 1)
    code = await cli("batch", str(rows), "--out", str(tmp_path / "o"), "--settle", "2")
    out = capsys.readouterr().out
    assert code == EXIT_CODES["needs_attention"]
    assert "NEEDS ATTENTION r0" in out
    assert foreign.id in out
    assert "pixelbyte-async batch resolve r0" in out
    assert live.count("POST", "/v1/jobs/submit") == 1


@pytest.mark.anyio
async def test_job_commands(live, tmp_path, capsys):
    """status, wait, jobs and cancel wrap one client call each."""
    async with bound_client(live) as pb:
        job = await pb.submit(
            KlingO1StartEndFrame(
                image_url="https://e.x/a.jpg", end_image_url="https://e.x/b.jpg"
            )
        )
    assert await cli("status", job.id, "--json") == 0
    assert json.loads(capsys.readouterr().out)["jobId"] == job.id
    target = tmp_path / "w.mp4"
    assert await cli("wait", job.id, "-o", str(target), "--poll-interval", "0.02") == 0
    assert f"{job.id}  completed" in capsys.readouterr().out
    assert target.read_bytes() == MP4
    assert await cli("jobs", "--json", "--limit", "5", "--status", "completed") == 0
    assert [j["jobId"] for j in json.loads(capsys.readouterr().out)] == [job.id]
    assert await cli("cancel", job.id) == EXIT_CODES["validation"]
    assert "JOB_CANNOT_BE_CANCELLED" in capsys.readouterr().err
    live.set_default_script(JobScript(queue_seconds=600))
    async with bound_client(live) as pb:
        pending = await pb.submit(
            SLUG,
            {"image_url": "https://e.x/1.jpg", "end_image_url": "https://e.x/2.jpg"},
        )
    assert await cli("cancel", pending.id, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "jobId": pending.id,
        "status": "cancelled",
        "refundedMicroCents": 250_000,
    }
    assert await cli("status", "job_nope") == EXIT_CODES["not_found"]


def test_estimate_models_and_transition_in_the_sandbox(tmp_path, capsys):
    """estimate (API, local, any model), models and transition run on --sandbox."""
    assert main(["estimate", "--duration", "6", "--sandbox", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["estimatedCostMicroCents"] == 300_000
    assert main(["estimate", "--duration", "6", "--pro", "--local"]) == 0
    assert "$0.42 (420,000 micro-cents)" in capsys.readouterr().out
    echo = ["--model", "test/echo-image/text-to-image", "--input", '{"prompt": "x"}']
    assert main(["estimate", *echo, "--sandbox", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["estimatedCostMicroCents"] == 10_000
    assert main(["estimate", "--duration", "11", "--local"]) == 3
    assert main(["estimate", "--model", "a/b/c", "--input", "{", "--local"]) == 3
    capsys.readouterr()
    assert main(["models", "--sandbox", "--json"]) == 0
    assert SLUG in {m["slug"] for m in json.loads(capsys.readouterr().out)}
    out = tmp_path / "t.mp4"
    argv = ["transition", "--sandbox", "--time-scale", "1000", "-o", str(out)]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["status"], result["bytes"]) == ("completed", len(MP4))


def test_sandbox_command_runs_the_fake(monkeypatch):
    """'sandbox' is python -m pixelbyte_async.testing in the foreground."""
    seen: list[tuple[int, float]] = []

    async def serve(args, out):
        seen.append((args.port, args.time_scale))

    monkeypatch.setattr("pixelbyte_async._fake._process._serve_sandbox", serve)
    assert main(["sandbox", "--port", "0", "--time-scale", "5"]) == 0
    assert seen == [(0, 5.0)]


@pytest.mark.anyio
async def test_api_key_is_never_printed(live, tmp_path, capsys):
    """--api-key is used, never echoed: not in output, errors or the resume hint."""
    live.set_default_script(JobScript(queue_seconds=0.05, processing_seconds=30))
    rows = write_rows(tmp_path / "rows.jsonl", 1)
    code = await cli(
        "batch",
        str(rows),
        "--out",
        str(tmp_path / "o"),
        "--api-key",
        KEY,
        "--wait-timeout",
        "0.2",
        "--poll-interval",
        "0.05",
    )
    captured = capsys.readouterr()
    assert code == EXIT_CODES["timeout"]
    assert (
        "Set PIXELBYTE_API_KEY to your key (--api-key is never shown), then run the "
        "same command again to finish: pixelbyte-async batch"
    ) in captured.out
    assert KEY not in captured.out + captured.err
    journal = tmp_path / "rows.jsonl.journal.sqlite"
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("rows.jsonl.journal*"))
    assert KEY.encode() not in stored
    assert read_rows(journal)["r0"].state == "submitted"
    assert await cli("status", "job_nope", "--api-key", "pb_wrong_key_xyz") == 4
    assert "pb_wrong_key_xyz" not in capsys.readouterr().err


@pytest.mark.anyio
async def test_ctrl_c_and_kill_9_then_resume_pay_once(tmp_path):
    """
    Ctrl-C, then kill -9, then the same command: every row paid once, none lost.

    The batch runs as a real subprocess against a fake served by this test.
    """
    count = 8
    rows = write_rows(tmp_path / "rows.jsonl", count)
    out = tmp_path / "out"
    async with FakePixelByte(time_scale=1.0) as fake:
        fake.set_default_script(JobScript(queue_seconds=0.1, processing_seconds=0.4))
        env = subprocess_env(fake)
        argv = [
            sys.executable,
            "-m",
            "pixelbyte_async",
            "batch",
            str(rows),
            "--out",
            str(out),
            "--concurrency",
            "2",
            "--poll-interval",
            "0.02",
            "--settle",
            "0.2",
        ]

        async def start():
            return await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )

        # 1. Ctrl-C once two jobs exist: clean stop, nothing cancelled.
        proc = await start()
        await until(lambda: len(fake.jobs) >= 2)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == EXIT_CODES["interrupted"], err.decode()
        assert b"Resume with: pixelbyte-async batch" in err
        assert fake.count("POST", "/v1/jobs/*/cancel") == 0
        # Interrupted, it still wrote its report: the rows not finished are waiting.
        assert 'data-group="waiting"' in (out / "report.html").read_text()

        # 2. kill -9 while a submit is on the wire: the API creates that job
        #    after the process died, so its row is left 'submitting'.
        fake.inject(Fault.delay(0.3), method="POST", path="/v1/jobs/submit")
        proc = await start()
        await until(lambda: any(r.fault == "delay" for r in fake.requests))
        on_the_wire = len(fake.jobs)  # its job is created 0.3 s after arrival
        proc.kill()
        await proc.wait()
        await until(lambda: len(fake.jobs) > on_the_wire)
        known = set(fake.jobs)
        before = read_rows(tmp_path / "rows.jsonl.journal.sqlite")
        assert "submitting" in {row.state for row in before.values()}
        mark = len(fake.requests)

        # 3. The same command again finishes the batch.
        proc = await start()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        resumed = fake.requests[mark:]

    assert fake.ledger.double_charged() == []
    assert sorted(fake.ledger.charges_by_fingerprint().values()) == [1] * count
    assert len(fake.jobs) == count
    assert {job.status for job in fake.jobs.values()} == {"completed"}
    for n in range(count):
        assert (out / f"r{n}.mp4").read_bytes() == MP4
    assert list(out.glob(".*.part")) == []
    # Jobs of the stopped runs were re-attached by id, never submitted again.
    submits = [r for r in resumed if r.path == "/v1/jobs/submit"]
    assert len(submits) == count - len(known)
    downloaded = {r.job_id for r in before.values() if r.state == "downloaded"}
    looked_up = {
        r.path.rsplit("/", 1)[1] for r in resumed if r.path.startswith("/v1/jobs/job_")
    }
    assert known - downloaded <= looked_up
    # ... and the submit of unknown fate was reconciled (job list), not re-sent.
    assert any(r.path == "/v1/jobs" and "modelId" in r.query for r in resumed)


# -- webhooks on the command line ---------------------------------------------------------

VECTOR_BODY = b'{"jobId":"job_abc123","status":"completed"}'
VECTOR_SIG = "sha256=3808736d8de9872ff32cb085bd9851cbad6f089e4e55195bbec1450e5295989e"


def test_webhook_verify_saved_delivery(tmp_path, capsys):
    """webhook verify accepts the pinned vector and says why a tampered one fails."""
    body = tmp_path / "body.json"
    body.write_bytes(VECTOR_BODY)
    args = [
        "webhook",
        "verify",
        str(body),
        "--webhook-secret",
        "whsec_test",
        "--now",
        "1760000000",
    ]
    headers = [
        "-H",
        "X-PixelByte-Timestamp: 1760000000",
        "-H",
        f"X-PixelByte-Signature: {VECTOR_SIG}",
    ]
    assert main([*args, *headers]) == 0
    assert capsys.readouterr().out.strip() == "job_abc123 completed"
    dump = tmp_path / "headers.txt"
    dump.write_text(
        f"HTTP/1.1 200 OK\nx-pixelbyte-timestamp: 1760000000\nx-pixelbyte-signature: {VECTOR_SIG}\n"
    )
    assert main([*args, "--headers-file", str(dump), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["jobId"] == "job_abc123"
    body.write_bytes(VECTOR_BODY + b" ")
    assert main([*args, *headers]) == EXIT_CODES["webhook_invalid"] == 14
    assert "does not match" in capsys.readouterr().err
    body.write_bytes(VECTOR_BODY)
    assert (
        main(
            ["webhook", "verify", str(body), *headers, "--webhook-secret", "whsec_test"]
        )
        == 14
    )
    assert "old" in capsys.readouterr().err


def test_webhook_secret_is_required(tmp_path, capsys, monkeypatch):
    """Without a secret the command says how to give one."""
    monkeypatch.delenv("PIXELBYTE_WEBHOOK_SECRET", raising=False)
    body = tmp_path / "body.json"
    body.write_bytes(VECTOR_BODY)
    assert main(["webhook", "verify", str(body)]) == EXIT_CODES["validation"]
    assert "PIXELBYTE_WEBHOOK_SECRET" in capsys.readouterr().err


@pytest.mark.anyio
async def test_webhook_listen_prints_verified_deliveries():
    """webhook listen verifies deliveries, prints them and rejects forgeries."""
    import argparse
    import io

    import aiohttp
    from pixelbyte_async._cli._webhook_commands import _webhook_listen
    from pixelbyte_async.webhooks import signature_headers

    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(
        host="127.0.0.1",
        port=0,
        path="/hook",
        json=False,
        max_events=1,
        webhook_secret=["whsec_cli"],
    )
    task = asyncio.ensure_future(_webhook_listen(args, out, err))
    for _ in range(200):
        if "Listening on" in err.getvalue():
            break
        await asyncio.sleep(0.005)
    url = err.getvalue().split("Listening on ")[1].split(" ")[0]
    body = (
        b'{"jobId":"job_cli","status":"completed","output":"https://cdn.example/v.mp4"}'
    )
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, data=body, headers=signature_headers(body, "whsec_forged")
        ) as r:
            assert r.status == 401
        async with http.post(
            url, data=body, headers=signature_headers(body, "whsec_cli")
        ) as r:
            assert r.status == 200
    assert await asyncio.wait_for(task, 5) == 0
    assert out.getvalue().strip() == "job_cli completed https://cdn.example/v.mp4"


@pytest.mark.anyio
async def test_transition_listen_on_the_sandbox(tmp_path):
    """transition --sandbox --listen waits for the delivery and writes the video."""
    out = tmp_path / "t.mp4"
    code = await cli(
        "transition",
        "--sandbox",
        "--listen",
        "127.0.0.1:0",
        "--time-scale",
        "2000",
        "-o",
        str(out),
        "--json",
        "--quiet",
    )
    assert code == 0
    assert out.read_bytes() == MP4


def test_listen_needs_a_public_url_for_the_real_api(capsys, monkeypatch):
    """--listen against the real API needs --public-url and a secret; nothing is sent."""
    monkeypatch.setenv("PIXELBYTE_API_KEY", KEY)
    code = main(
        ["transition", "https://e.x/a.jpg", "https://e.x/b.jpg", "--listen", "8080"]
    )
    assert code == EXIT_CODES["validation"]
    assert "--public-url" in capsys.readouterr().err
