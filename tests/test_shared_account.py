"""
Shared accounts (issue 21): a lost submit's job is taken only with proof.

Real accounts are shared: the workers of one app, a batch beside a bot, a
restarted process, staging and production on one key, the dashboard.  Each test
reproduces a finding where reconcile took another submitter's job for its own,
in the variants the issue names: one machine sharing a ledger, two "machines"
with ledgers of their own, and a restarted process.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import aiohttp
import pytest
from pixelbyte_async import (
    AmbiguousSubmitError,
    KlingO1StartEndFrame,
    MockTransport,
    PixelByte,
    ReconcileError,
    VirtualClock,
    json_response,
)
from pixelbyte_async.testing import FakePixelByte, Fault
from pixelbyte_async.webhooks import WebhookServer, sign

from conftest import bound_client


pytestmark = pytest.mark.anyio

SUBMIT = "/v1/jobs/submit"
SLUG = "kling-plus/kling-o1-standard/start-end-frame-to-video"


def kling(prompt: str, duration: int = 5) -> KlingO1StartEndFrame:
    return KlingO1StartEndFrame(
        image_url="https://e.x/a.jpg",
        end_image_url="https://e.x/b.jpg",
        prompt=prompt,
        duration=duration,
    )


async def lose_submit(pb, fault: Fault, fake: FakePixelByte, prompt: str = "A"):
    fake.inject(fault, method="POST", path=SUBMIT)
    with pytest.raises(AmbiguousSubmitError) as lost:
        await pb.submit(kling(prompt))
    return lost.value


# -- finding 1: reconcile adopts another app's job ------------------------------------


async def test_one_machine_a_lost_submit_never_takes_the_other_apps_job(fake):
    """A's submit is lost before creating anything; B (same machine) submits next."""
    async with bound_client(fake) as a, bound_client(fake) as b:
        lost = await lose_submit(a, Fault.drop_before(), fake)
        theirs = await b.submit(kling("B"))
        assert await a.reconcile(lost) is None
        assert theirs.input["prompt"] == "B"
    assert fake.jobs[theirs.id].input["prompt"] == "B"
    assert len(fake.jobs) == 1


async def test_one_machine_a_late_job_is_found_beside_the_other_apps(fake):
    """A's job appears 30 s late; B's job came first: A gets its own, not B's."""
    async with bound_client(fake) as a, bound_client(fake) as b:
        lost = await lose_submit(a, Fault.late_create(30), fake)
        theirs = await b.submit(kling("B"))
        found = await a.reconcile(lost)
    assert found is not None
    assert found.id != theirs.id
    assert fake.jobs[found.id].input["prompt"] == "A"
    assert fake.ledger.double_charged() == []


@pytest.mark.parametrize("fault", ["drop_before", "late_create"])
async def test_two_machines_refuse_to_guess_with_other_submitters(fake, fault):
    """
    Separate ledgers: B's jobs are foreign to A, so the list proves nothing.

    A is never handed B's job: with nothing created it raises (the one job in the
    window could be its own), and its input is never written onto B's job.
    """
    async with (
        bound_client(fake, ledger=None) as a,
        bound_client(fake, ledger=None) as b,
    ):
        await b.submit(kling("B earlier"))  # B is an active submitter
        fake.advance(20)
        lost = await lose_submit(
            a,
            Fault.drop_before() if fault == "drop_before" else Fault.late_create(30),
            fake,
        )
        theirs = await b.submit(kling("B"))
        with pytest.raises(ReconcileError) as refused:
            await a.reconcile(lost)
        error = refused.value
        assert theirs.id in {j.id for j in error.candidates}
        assert error.foreign  # the earlier job nobody A knows made
        assert "other submitters" in str(error)
        assert "webhooks" in str(error).lower()
        assert error.settle_at == lost.started_at + 300
        assert fake.clock.time() >= error.settle_at  # every candidate was seen
        assert all(j.input != lost.input for j in error.candidates)
    expected = 2 if fault == "drop_before" else 3
    assert len(fake.jobs) == expected


async def test_two_machines_without_foreign_activity_adopt_by_the_list(fake):
    """A's ledger explains every other job of the model: its one candidate is its own."""
    async with bound_client(fake, ledger=None) as a:
        await a.submit(kling("A earlier"))
        lost = await lose_submit(a, Fault.late_create(5), fake)
        found = await a.reconcile(lost)
    assert found is not None
    assert fake.jobs[found.id].input["prompt"] == "A"


async def test_a_restart_knows_its_predecessors_jobs_through_the_ledger(fake):
    """A restarted process sees the previous one's job as explained, not as its own."""
    async with bound_client(fake) as before:
        earlier = await before.submit(kling("before the restart"))
    fake.advance(5)
    async with bound_client(fake) as after:
        lost = await lose_submit(after, Fault.drop_before(), fake)
        assert await after.reconcile(lost) is None
    assert list(fake.jobs) == [earlier.id]


async def test_a_restart_finds_its_predecessors_lost_submit(fake):
    """The ledger holds the killed process's attempt: the new one reconciles it by id."""
    async with bound_client(fake) as before:
        lost = await lose_submit(before, Fault.late_create(10), fake)
    record = AmbiguousSubmitError(
        "from the app's own records",
        model=lost.model,
        input=lost.input,
        webhook_url=None,
        started_at=lost.started_at,
        attempt=lost.attempt,
    )
    async with bound_client(fake) as after:
        found = await after.reconcile(record)
    assert found is not None
    assert fake.jobs[found.id].input["prompt"] == "A"


async def test_an_in_flight_submit_elsewhere_is_waited_for(fake):
    """B's submit is on the wire (its job exists, no answer yet): A waits, then knows."""
    async with bound_client(fake) as a, bound_client(fake) as b:
        lost = await lose_submit(a, Fault.drop_before(), fake)
        fake.inject(Fault.delay(0.2), method="POST", path=SUBMIT)
        theirs = asyncio.ensure_future(b.submit(kling("B")))
        await asyncio.sleep(0.05)  # B's request is at the fake (real-time delay)
        assert await a.reconcile(lost) is None
        assert (await theirs).input["prompt"] == "B"


# -- finding 5: a delivery with another attempt's nonce ----------------------------------


async def post_delivery(url: str, secret: str, body: bytes, timestamp: int) -> int:
    headers = {
        "X-PixelByte-Timestamp": str(timestamp),
        "X-PixelByte-Signature": sign(body, secret, timestamp),
        "Content-Type": "application/json",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status


async def test_a_replayed_delivery_with_our_nonce_is_not_proof():
    """B's signed completion posted to A's ?pb_attempt=: A does not take B's job."""
    clock = VirtualClock(autojump=True)
    async with FakePixelByte(clock=clock, allow_http_webhooks=True) as fake:
        server = WebhookServer(fake.webhook_secret, clock=clock)
        async with (
            bound_client(fake, webhook=server) as a,
            bound_client(fake) as b,
        ):
            lost = await lose_submit(a, Fault.drop_before(), fake)
            assert lost.tagged
            theirs = await b.submit(kling("B"))
            fake.complete_now(theirs.id)
            body = (
                b'{"jobId":"%s","status":"completed","output":"https://cdn.e.x/v.mp4"}'
                % theirs.id.encode()
            )
            url = f"{server.public_url}?pb_attempt={lost.attempt}"
            status = await post_delivery(
                url, fake.webhook_secret, body, int(clock.time())
            )
            assert status == 200
            assert await a.reconcile(lost) is None
    assert fake.jobs[theirs.id].input["prompt"] == "B"


async def test_a_delivery_for_a_job_from_before_the_attempt_is_not_proof():
    """A signed delivery naming our attempt for a job made before it: refused."""
    clock = VirtualClock(autojump=True)
    async with FakePixelByte(clock=clock, allow_http_webhooks=True) as fake:
        old = fake.submit_elsewhere(kling("old").model_slug, kling("old").to_input())
        fake.advance(60)
        server = WebhookServer(fake.webhook_secret, clock=clock)
        async with bound_client(fake, webhook=server) as a:
            lost = await lose_submit(a, Fault.drop_before(), fake)
            body = b'{"jobId":"%s","status":"pending"}' % old.id.encode()
            url = f"{server.public_url}?pb_attempt={lost.attempt}"
            await post_delivery(url, fake.webhook_secret, body, int(clock.time()))
            # The old job is not in the attempt's window: the delivery proves
            # nothing, and with no job in the window the submit made none.
            assert await a.reconcile(lost) is None


# -- the job list's order ---------------------------------------------------------------


def iso(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat().replace("+00:00", "Z")


async def test_a_late_listed_old_job_does_not_hide_the_window():
    """An old job listed before younger ones (late creation) ends no listing early."""
    clock = VirtualClock(start=1_800_000_000.0)
    now = clock.time()
    old = {"jobId": "job_old", "status": "completed", "createdAt": iso(now - 900)}
    mine = {"jobId": "job_mine", "status": "pending", "createdAt": iso(now + 5)}

    def answer(request):
        if request.url.endswith("/v1/jobs"):
            return json_response({"jobs": [old, mine], "hasMore": False})
        return json_response({**mine, "model": SLUG})

    transport = MockTransport(answer)
    async with PixelByte(
        api_key="pb_test", transport=transport, clock=clock, ledger=None
    ) as pb:
        lost = AmbiguousSubmitError(
            "lost",
            model=SLUG,
            input={},
            webhook_url=None,
            started_at=now,
            attempt="mine0000",
        )
        found = await pb.reconcile(lost, exclude={"job_old"})
    assert found is not None
    assert found.id == "job_mine"


async def test_the_fake_lists_late_creations_in_creation_order(fake):
    """FakePixelByte lists by createdAt, as the API's cursor says, not by arrival."""
    late = fake.submit_elsewhere(SLUG, kling("late").to_input(), after=30)
    fake.advance(10)
    young = fake.submit_elsewhere(SLUG, kling("young").to_input())
    fake.advance(30)
    async with bound_client(fake) as pb:
        listed = [job.id async for job in pb.list_jobs()]
    assert listed == [late.id, young.id]


async def test_a_killed_processes_submit_is_not_waited_for_until_its_deadline(fake):
    """
    A process of this machine died mid-submit: its attempt says "on the wire until
    its deadline" (up to submit_timeout, 15 min).  Nobody will answer it: the next
    reconcile of the model does not wait that long, and its tries still count.
    """
    import socket
    import sys

    from pixelbyte_async._ledger import Attempt

    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()  # its pid is free now
    async with bound_client(fake) as pb:
        now = fake.clock.time()
        await pb.ledger.begin(
            Attempt(
                id="killedattempt01",
                model=SLUG,
                started_at=now,
                ends_by=now + 910,
                state="sending",
                owner=f"{socket.gethostname()}:{gone.pid}:abc",
            )
        )
        # The dead process's submit made a job; ours, lost too, made none.
        fake.submit_elsewhere(SLUG, kling("killed").to_input())
        lost = await lose_submit(pb, Fault.drop_before(), fake)
        began = fake.clock.time()
        with pytest.raises(ReconcileError, match="other submit"):
            await pb.reconcile(lost)  # either could have made it: no guess ...
        assert fake.clock.time() - began < 400  # ... after the horizon, not 15 min
        given_up = await pb.ledger.attempt("killedattempt01")
        assert given_up is not None
        assert given_up.ends_by < now + 910
