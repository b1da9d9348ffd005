"""
The chat-bot recipes survive production: every outcome reaches the right chat as
one line or the video, once, and a bot restarted (or killed) mid-job still delivers.

The code is the recipes' own, run from ``docs/recipes/{telegram,discord}.md``
against the real aiogram and discord.py (the ``recipes`` dependency group), with
the bot's PixelByte client bound to a `FakePixelByte`: Telegram through aiogram's
real ``Dispatcher`` (``dp.feed_update``) and a bot whose session records instead of
sending; Discord through a real ``discord.Client``, its ``CommandTree`` (the
command's ``.callback``, with the page's interaction double) and its real channel
objects, posting through the page's recording HTTP client.

Both bots are tracked-job bots: the command submits with a context and returns, and
the ``on_finished`` handler registered at start-up (before ``resume()``) delivers.
Time is the fake's virtual clock, moved on by `run_until_handled`; the kill -9
tests run the bots in processes of their own (``recipe_bot_process.py``) against a
fake in real time.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import re
import signal
import sys
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiogram.exceptions import (
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramNetworkError,
)
from aiogram.methods import SendMessage, SendVideo
from pixelbyte_async.testing import FakePixelByte, Fault, JobScript

from conftest import bound_client, subprocess_env, until
from recipe_bot_process import (
    RECIPES,
    TOKEN,
    load_recipe,
    python_blocks,
    run_until_handled,
)


with warnings.catch_warnings():
    # discord.py imports the stdlib's audioop, deprecated in Python 3.11 and 3.12.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import discord


__all__ = ["load_recipe", "python_blocks"]  # test_recipes_web and _django use them

START = "https://example.com/sunrise.jpg"
END = "https://example.com/night.jpg"
ON_IT = r"On it: job (?P<job>job_\w+), about four minutes\."
VIDEO = r"video: [1-9]\d* bytes|\[job_\w+\.mp4: [1-9]\d* bytes\]"
CHECKING = (
    r"PixelByte is slow to answer; checking whether the job started\. The video "
    r"comes here if it did, and word that it did not otherwise\."
)
NEVER_STARTED = (
    r"PixelByte never started that video \(nothing was charged\); please ask again\."
)
BOT_PROCESS = Path(__file__).parent / "recipe_bot_process.py"


def chat_lines(log: list[str], chat: int = 42, *, answered: int) -> list[str]:
    """
    A Telegram chat's lines, without the chat id and the reply mark.

    The first *answered* were sent by the command (plain answers); the rest by the
    on_finished handler, each a reply to the command (message 1).
    """
    lines = []
    for n, entry in enumerate(log):
        prefix, reply = f"{chat}: ", " (reply to 1)"
        assert entry.startswith(prefix), entry
        text = entry.removeprefix(prefix)
        assert text.endswith(reply) == (n >= answered), entry
        lines.append(text.removesuffix(reply))
    return lines


def channel_lines(log: list[str], channel: int = 555, user: int = 7) -> list[str]:
    """A Discord channel's lines, without the channel and the user's mention."""
    prefix = f"#{channel}: <@{user}> "
    assert all(entry.startswith(prefix) for entry in log), log
    return [entry.removeprefix(prefix) for entry in log]


# -- one driver per bot: started as at start-up, a command in, the chat's lines out ----


async def ask_telegram(
    ns: dict[str, Any], fake: FakePixelByte, args: str, *, session: Any = None
) -> list[str]:
    """Start the bot as main() does, send ``/transition ARGS``; return the chat's lines."""
    fake.clock.autojump = False  # time moves in run_until_handled
    bot = ns["Bot"](token=TOKEN, session=session or ns["RecordingSession"]())
    async with bound_client(fake) as pb:
        pb.on_finished(ns["delivery"](bot))  # main()'s start-up
        pb.on_lost(ns["lost_notice"](bot))
        await pb.resume()
        await ns["dp"].feed_update(bot, ns["command"](f"/transition {args}"), pb=pb)
        answered = len(bot.session.log)
        await run_until_handled(fake, pb)
    return chat_lines(bot.session.log, answered=answered)


async def ask_discord(
    ns: dict[str, Any], fake: FakePixelByte, args: str, *, filesize_limit: int = 10**7
) -> list[str]:
    """Start the bot as login() does, call ``/transition``; return what it posted."""
    fake.clock.autojump = False
    start, end, *prompt = args.split(maxsplit=2)
    async with bound_client(fake) as pb, ns["TransitionBot"](pb) as bot:
        http = ns["offline"](bot)
        await bot.setup_hook()  # what login() runs: on_finished, then resume()
        interaction = ns["RecordingInteraction"](bot, filesize_limit=filesize_limit)
        await bot.tree.get_command("transition").callback(
            interaction,
            ns["attachment"](bot, start),
            ns["attachment"](bot, end),
            prompt[0] if prompt else None,
        )
        await run_until_handled(fake, pb)
    assert interaction.sent[0] == "(thinking=True)"
    return interaction.sent[1:] + channel_lines(http.log)


BOTS = {"telegram": ask_telegram, "discord": ask_discord}


@pytest.fixture(name="bot", params=sorted(BOTS))
def _bot(request) -> tuple[dict[str, Any], Callable[..., Awaitable[list[str]]]]:
    return load_recipe(request.param), BOTS[request.param]


# -- every outcome is one line, or the video --------------------------------------------


def _nothing(fake: FakePixelByte) -> None:
    pass


def _empty_balance(fake: FakePixelByte) -> None:
    fake.balance_micro_cents = 0


def _lost_answer(fake: FakePixelByte) -> None:
    fake.inject(Fault.drop_after(), method="POST", path="/v1/jobs/submit")


def _no_job(fake: FakePixelByte) -> None:
    fake.inject(Fault.status(500, "INTERNAL_ERROR"), path="/v1/jobs/submit")


def _refused(fake: FakePixelByte) -> None:
    fake.inject(Fault.status(403, "MODEL_ACCESS_DENIED"), path="/v1/jobs/submit")


def _fails(fake: FakePixelByte) -> None:
    fake.script_next(JobScript(outcome="failed"))


def _slow(fake: FakePixelByte) -> None:
    fake.script_next(JobScript(processing_seconds=1800))  # past the old 600 s wait


def _cdn_down(fake: FakePixelByte) -> None:
    fake.inject(
        Fault.status(503, "INTERNAL_ERROR"), origin="cdn", path="/outputs/*", times=None
    )


def _no_output(fake: FakePixelByte) -> None:
    fake.script_next(JobScript(output_shape="none"))


NOT_HTTPS = r"Both frames must be https:// links to images\."

CASES = [
    ("ok", _nothing, f"{START} {END} dusk", [ON_IT, VIDEO]),
    ("http-frame", _nothing, f"http://example.com/a.jpg {END}", [NOT_HTTPS]),
    ("local-path", _nothing, f"/etc/passwd {END}", [NOT_HTTPS]),
    ("bad-input", _nothing, f"{START} {END} {'x' * 3000}", [r"I can't use that: .*"]),
    (
        "empty-balance",
        _empty_balance,
        f"{START} {END}",
        [r"The video budget is used up; please try again later\."],
    ),
    # Never re-sent: the SDK reconciles it in the background, and the handler
    # delivers once the job is found ...
    ("answer-lost-job-found", _lost_answer, f"{START} {END}", [CHECKING, VIDEO]),
    # ... or the SDK finds, after the settle horizon, that it made none.
    ("answer-lost-no-job", _no_job, f"{START} {END}", [CHECKING, NEVER_STARTED]),
    ("refused", _refused, f"{START} {END}", [r"PixelByte said no: .*"]),
    (
        "job-failed",
        _fails,
        f"{START} {END}",
        [ON_IT, r"Job job_\w+ failed \(GENERATION_FAILED\); it was refunded\."],
    ),
    ("slow-job", _slow, f"{START} {END}", [ON_IT, VIDEO]),
    (
        "download-failed",
        _cdn_down,
        f"{START} {END}",
        [ON_IT, r"The video is ready, but I couldn't fetch it: http://\S+\.mp4"],
    ),
    (
        "no-output",
        _no_output,
        f"{START} {END}",
        [ON_IT, r"Job job_\w+ ended without a video link; please report it\."],
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "case", [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
async def test_every_outcome_is_one_line_each(bot, fake, case):
    """Each outcome ends in its own line; nothing is left at "On it" or unanswered."""
    ns, ask = bot
    setup, args, expected = case
    setup(fake)

    lines = await ask(ns, fake, args)

    assert len(lines) == len(expected), lines
    for pattern, line in zip(expected, lines, strict=True):
        assert re.fullmatch(pattern, line), (pattern, line)
    assert fake.count("POST", "/v1/jobs/submit") <= 1  # never sent twice
    assert fake.ledger.double_charged() == []


@pytest.mark.anyio
@pytest.mark.parametrize("frame", ["http://example.com/a.jpg", "/etc/passwd", "a.jpg"])
async def test_frames_that_are_not_https_urls_send_nothing(bot, fake, frame):
    """User-given frames are checked before a request is built: no upload, no submit."""
    ns, ask = bot

    await ask(ns, fake, f"{frame} {END}")

    assert fake.requests == []
    assert fake.cdn_requests == []


@pytest.mark.anyio
async def test_a_cancelled_job_is_one_line(bot, fake):
    """A job cancelled elsewhere (the CLI, say) ends in "Job … was cancelled."."""
    ns, ask = bot
    fake.script_next(JobScript(queue_seconds=3600))  # only a pending job can be

    async def cancel_it() -> None:
        await until(lambda: bool(fake.jobs))
        [job_id] = fake.jobs
        async with bound_client(fake) as other:
            await (await other.get_job(job_id)).cancel()

    canceller = asyncio.ensure_future(cancel_it())
    lines = await ask(ns, fake, f"{START} {END}")
    await canceller

    assert re.fullmatch(ON_IT, lines[0]), lines
    assert re.fullmatch(r"Job job_\w+ was cancelled\.", lines[1]), lines
    assert len(lines) == 2


# -- Telegram specifics -----------------------------------------------------------------


@pytest.mark.anyio
async def test_telegram_usage(fake, pb):
    """A command without two frames gets the usage line."""
    ns = load_recipe("telegram")
    bot = ns["Bot"](token=TOKEN, session=ns["RecordingSession"]())

    await ns["dp"].feed_update(bot, ns["command"]("/transition"), pb=pb)

    assert bot.session.log == ["42: Usage: /transition START_URL END_URL [prompt]"]


@pytest.mark.anyio
async def test_telegram_refused_video_is_sent_as_a_link_and_logged(fake, caplog):
    """Telegram refusing the upload still ends in a line (the link), and is logged."""
    ns = load_recipe("telegram")

    class RefusingSession(ns["RecordingSession"]):
        async def make_request(self, bot, method, timeout=None):
            if isinstance(method, SendVideo):
                raise TelegramEntityTooLarge(method=method, message="Too Large")
            return await super().make_request(bot, method, timeout)

    with caplog.at_level(logging.ERROR):
        lines = await ask_telegram(
            ns, fake, f"{START} {END}", session=RefusingSession()
        )

    assert re.fullmatch(ON_IT, lines[0])
    assert re.fullmatch(r"I couldn't send the video; download it: http://\S+", lines[1])
    assert len(lines) == 2
    assert "sending the video of job_" in caplog.text


@pytest.mark.anyio
async def test_telegram_sends_a_link_over_the_upload_limit(fake):
    """A video over Telegram's upload limit is sent as a link."""
    ns = load_recipe("telegram")
    ns["UPLOAD_LIMIT"] = 10

    lines = await ask_telegram(ns, fake, f"{START} {END}")

    assert re.fullmatch(r"Too big to send here; download it: http://\S+\.mp4", lines[1])


@pytest.mark.anyio
async def test_telegram_down_when_the_job_ends_is_tried_again(fake, caplog):
    """
    Telegram unreachable when the job ends: the handler raises, the SDK runs it
    again (2 s, 4 s), and the video arrives once Telegram is back; sent once.
    """
    ns = load_recipe("telegram")
    down = [4]  # the first handler run: video and link fail; the second: the same

    class FlakySession(ns["RecordingSession"]):
        async def make_request(self, bot, method, timeout=None):
            delivering = isinstance(method, SendVideo | SendMessage) and bool(
                method.reply_parameters
            )
            if delivering and down[0]:
                down[0] -= 1
                raise TelegramNetworkError(method=method, message="unreachable")
            return await super().make_request(bot, method, timeout)

    fake.clock.autojump = False
    bot = ns["Bot"](token=TOKEN, session=FlakySession())
    async with bound_client(fake) as pb:
        pb.on_finished(ns["delivery"](bot))
        await pb.resume()
        await ns["dp"].feed_update(
            bot, ns["command"](f"/transition {START} {END}"), pb=pb
        )
        await run_until_handled(fake, pb, step=2)
        [record] = await pb.ledger.tracked(states=("handled",))

    lines = chat_lines(bot.session.log, answered=1)
    assert re.fullmatch(ON_IT, lines[0])
    assert [re.fullmatch(VIDEO, line) is not None for line in lines[1:]] == [True]
    assert record.failures == 2
    assert "on_finished handler failed" in caplog.text


@pytest.mark.anyio
async def test_telegram_a_chat_that_blocked_the_bot_is_parked(fake):
    """The handler keeps failing (the user blocked the bot): parked after 5 tries."""
    ns = load_recipe("telegram")

    class BlockedSession(ns["RecordingSession"]):
        async def make_request(self, bot, method, timeout=None):
            if getattr(method, "reply_parameters", None):
                raise TelegramForbiddenError(method=method, message="bot was blocked")
            return await super().make_request(bot, method, timeout)

    fake.clock.autojump = False
    bot = ns["Bot"](token=TOKEN, session=BlockedSession())
    async with bound_client(fake) as pb:
        pb.on_finished(ns["delivery"](bot))
        await pb.resume()
        await ns["dp"].feed_update(
            bot, ns["command"](f"/transition {START} {END}"), pb=pb
        )
        await run_until_handled(fake, pb, step=5)
        [parked] = await pb.failed_handlers()

    assert parked.failures == 5
    assert "bot was blocked" in (parked.error or "")
    assert parked.job_id in fake.jobs
    assert len(bot.session.log) == 1  # "On it"


@pytest.mark.anyio
async def test_telegram_frames_are_checked_before_downloading():
    """Issue 25: photos and documents by what Telegram says of them, before paying."""
    from datetime import UTC, datetime

    from aiogram.types import Chat, Document, PhotoSize

    ns = load_recipe("telegram")
    bot = ns["Bot"](token=TOKEN, session=ns["RecordingSession"]())
    chat = Chat(id=42, type="private")
    downloads: list[str] = []

    async def download(file: Any, *args: Any, **kwargs: Any) -> io.BytesIO:
        downloads.append(file.file_id)
        return io.BytesIO(b"image")

    bot.download = download  # Telegram's file API, counted

    def message(**content: Any) -> Any:
        return ns["Message"](message_id=1, date=datetime.now(UTC), chat=chat, **content)

    def document(size: int | None, mime: str) -> Document:
        return Document(file_id="f", file_unique_id="u", file_size=size, mime_type=mime)

    def photo(size: int | None) -> list[PhotoSize]:
        small = PhotoSize(file_id="s", file_unique_id="s", width=90, height=90)
        return [
            small,
            PhotoSize(
                file_id="f", file_unique_id="u", width=1280, height=720, file_size=size
            ),
        ]

    refused = [
        message(document=document(500 * 1024**2, "video/mp4")),
        message(document=document(11 * 1024**2, "image/png")),
        message(document=document(None, "image/png")),
        message(photo=photo(20 * 1024**2)),
        message(text="no file at all"),
    ]
    for each in refused:
        assert await ns["frame_bytes"](bot, each) is None
    assert downloads == []
    # A small image is downloaded.
    for each in (
        message(photo=photo(1000)),
        message(document=document(1000, "image/jpeg")),
    ):
        assert await ns["frame_bytes"](bot, each) == b"image"
    assert downloads == ["f", "f"]
    assert bot.session.log == []


# -- a restart between submit and finish ------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("ends", ["while-down", "after-restart"])
async def test_telegram_restart_mid_job_delivers_to_each_chat_once(fake, ends):
    """
    Two chats' jobs are running when the bot stops (polling ends, PixelByte closes);
    a fresh bot and client on the same ledger resume them at start-up, and each
    video goes to its own chat, as a reply to its command, once.
    """
    ns = load_recipe("telegram")
    fake.clock.autojump = False
    first = ns["Bot"](token=TOKEN, session=ns["RecordingSession"]())
    async with bound_client(fake) as pb:
        pb.on_finished(ns["delivery"](first))
        await pb.resume()
        for chat, message in ((42, 5), (77, 9)):
            await ns["dp"].feed_update(
                first,
                ns["command"](
                    f"/transition {START} {END}", chat_id=chat, message_id=message
                ),
                pb=pb,
            )
    jobs = {
        int(line.split(":")[0]): re.search(r"job_\w+", line)[0]
        for line in first.session.log
    }
    assert sorted(jobs) == [42, 77]
    assert all(fake.jobs[j].status != "completed" for j in jobs.values())
    if ends == "while-down":
        fake.advance(600)

    second = ns["Bot"](token=TOKEN, session=ns["RecordingSession"]())
    async with bound_client(fake) as pb:
        pb.on_finished(ns["delivery"](second))  # main()'s start-up, in a new process
        resumed = await pb.resume()
        assert {(j.id, j.context["chat_id"]) for j in resumed} == {
            (job, chat) for chat, job in jobs.items()
        }
        await run_until_handled(fake, pb)
        assert await pb.resume() == []  # nothing left for a third start

    assert [line.split(": On it")[0] for line in first.session.log] == ["42", "77"]
    videos = sorted(second.session.log)
    assert len(videos) == 2
    assert re.fullmatch(r"42: video: [1-9]\d* bytes \(reply to 5\)", videos[0])
    assert re.fullmatch(r"77: video: [1-9]\d* bytes \(reply to 9\)", videos[1])
    assert len(fake.jobs) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("ends", ["while-down", "after-restart"])
async def test_discord_restart_mid_job_posts_in_each_channel_once(fake, ends):
    """
    Two channels' jobs are running when the bot closes (PixelByte first); a fresh
    bot and client on the same ledger resume them in setup_hook, and each video is
    posted in its own channel, mentioning its user, once.
    """
    ns = load_recipe("discord")
    fake.clock.autojump = False
    async with bound_client(fake) as pb, ns["TransitionBot"](pb) as first:
        first_http = ns["offline"](first)
        await first.setup_hook()
        interactions = {}
        for channel, user in ((555, 7), (556, 8)):
            interaction = ns["RecordingInteraction"](
                first, channel_id=channel, user_id=user
            )
            await first.tree.get_command("transition").callback(
                interaction,
                ns["attachment"](first, START),
                ns["attachment"](first, END),
            )
            interactions[channel] = interaction
    assert pb.closed  # bot.close() closed PixelByte first
    jobs = {
        channel: re.fullmatch(ON_IT, i.sent[1])["job"]
        for channel, i in interactions.items()
    }
    if ends == "while-down":
        fake.advance(600)

    async with bound_client(fake) as pb, ns["TransitionBot"](pb) as second:
        http = ns["offline"](second)
        await second.setup_hook()  # login() in the new process: resume()
        await run_until_handled(fake, pb)
        assert await pb.resume() == []

    assert first_http.log == []
    assert len(http.log) == 2
    for (channel, user), line in zip(
        ((555, 7), (556, 8)), sorted(http.log), strict=True
    ):
        video = rf"#{channel}: <@{user}> \[{jobs[channel]}\.mp4: [1-9]\d* bytes\]"
        assert re.fullmatch(video, line), line
    for interaction in interactions.values():  # its token has long expired
        assert len(interaction.sent) == 2


# -- a bot process killed with kill -9 between submit and finish -------------------------


class BotProcess:
    """A recipe's bot in a process of its own (``recipe_bot_process.py``)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def spawn(cls, fake: FakePixelByte, *args: str) -> BotProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BOT_PROCESS),
            *args,
            env=subprocess_env(fake),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first line printed that matches *pattern* (waiting for it)."""
        assert self.proc.stdout is not None
        n = 0
        with anyio.fail_after(timeout):
            while True:
                for line in self.lines[n:]:
                    if found := re.fullmatch(pattern, line):
                        return found
                n = len(self.lines)
                raw = await self.proc.stdout.readline()
                if not raw:
                    err = await self.proc.stderr.read() if self.proc.stderr else b""
                    raise AssertionError(f"ended before {pattern!r}: {err.decode()}")
                self.lines.append(raw.decode().rstrip("\n"))

    def go(self) -> None:
        """Start a bot spawned with ``--wait``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        assert self.proc.stdout is not None
        self.lines += (await self.proc.stdout.read()).decode().splitlines()


async def handled_in_ledger(fake: FakePixelByte, job_id: str) -> None:
    """Wait until the shared ledger says *job_id* was handled."""
    async with bound_client(fake) as pb:
        for _ in range(400):
            records = await pb.ledger.tracked(states=("handled",))
            if any(r.job_id == job_id for r in records):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} was never marked handled")


#: What each bot prints: its "On it", and the delivery (chat 42 / channel 555).
KILLED = {
    "telegram": (
        rf"sent 42: {ON_IT}",
        r"sent 42: video: [1-9]\d* bytes \(reply to 1\)",
    ),
    "discord": (
        rf"sent {ON_IT}",
        r"sent #555: <@7> \[(?P<job>job_\w+)\.mp4: [1-9]\d* bytes\]",
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(KILLED))
async def test_a_bot_killed_mid_job_delivers_once_after_its_restart(name):
    """
    kill -9 after "On it", before the job ends; the job ends while no bot runs; the
    next bot process resumes it at start-up and delivers it to the right chat, once.
    Telegram's runs the page's own main().
    """
    on_it, delivery = KILLED[name]
    async with FakePixelByte(time_scale=1.0) as fake:
        fake.set_default_script(JobScript(queue_seconds=0.05, processing_seconds=0.8))
        later = await BotProcess.spawn(fake, name, "--wait")  # imports meanwhile
        first = await BotProcess.spawn(fake, name, f"{START} {END} dusk")
        try:
            job_id = (await first.line(on_it))["job"]
            await first.kill()  # mid-job: its handler never ran
            assert fake.jobs[job_id].status != "completed"
            await until(lambda: fake.jobs[job_id].status == "completed", 10)
            await later.line("ready")
            later.go()
            await later.line(delivery)
            await handled_in_ledger(fake, job_id)
            await asyncio.sleep(0.3)  # time for a second delivery, if there were one
        finally:
            await first.kill()
            await later.kill()
        async with bound_client(fake) as pb:
            assert await pb.resume() == []  # nothing left for a third start
        assert len(fake.jobs) == 1
        assert fake.count("POST", "/v1/jobs/submit") == 1

    said = [line for line in first.lines if re.fullmatch(on_it, line)]
    assert len(said) == 1, first.lines
    assert not any(re.fullmatch(delivery, line) for line in first.lines), first.lines
    sent = [line for line in later.lines if line.startswith("sent ")]
    assert len(sent) == 1, later.lines
    assert re.fullmatch(delivery, sent[0]), later.lines
    if name == "discord":
        assert re.fullmatch(delivery, sent[0])["job"] == job_id


# -- the SDK's part: the orphan scan and the bot's own submits ---------------------------


@pytest.mark.anyio
async def test_a_command_during_the_orphan_scan_is_delivered_once(caplog):
    """
    After resume() the SDK looks for orphaned jobs every lease period (60 s; 0.25 s
    here); a submit on the wire when it looks is the bot's own, not an orphan: its
    video must be sent once, and the ledger must say it was handled.
    """
    ns = load_recipe("telegram")
    async with FakePixelByte(time_scale=1.0) as fake:
        fake.set_default_script(JobScript(queue_seconds=0.05, processing_seconds=0.1))
        fake.inject(Fault.delay(0.5), method="POST", path="/v1/jobs/submit")
        bot = ns["Bot"](token=TOKEN, session=ns["RecordingSession"]())
        async with bound_client(fake, settle=2) as pb:
            pb._tracker.lease = 0.25  # a scan while the submit is on the wire
            pb.on_finished(ns["delivery"](bot))
            await pb.resume()
            await ns["dp"].feed_update(
                bot, ns["command"](f"/transition {START} {END}"), pb=pb
            )
            await until(lambda: len(bot.session.log) >= 2, 10)
            await asyncio.sleep(0.6)  # time for a second delivery, if there is one
            records = await pb.ledger.tracked(states=("active", "handled", "none"))
        [job_id] = fake.jobs
    assert len(bot.session.log) == 2, bot.session.log
    assert [(r.state, r.job_id) for r in records] == [("handled", job_id)]
    assert "may be handled twice" not in caplog.text


# -- Discord specifics --------------------------------------------------------------------


@pytest.mark.anyio
async def test_discord_sends_a_link_over_the_channels_limit(fake):
    """The limit is the interaction's own (``interaction.filesize_limit``), kept in the context."""
    ns = load_recipe("discord")

    small = await ask_discord(ns, fake, f"{START} {END}", filesize_limit=10)
    large = await ask_discord(ns, fake, f"{START} {END}", filesize_limit=10**7)

    assert re.fullmatch(r"Too big to attach; here it is: http://\S+\.mp4", small[1])
    assert re.fullmatch(VIDEO, large[1])


@pytest.mark.anyio
async def test_discord_posts_in_the_channel_after_the_interaction_expired(fake):
    """
    A job that ends 30 minutes later (the interaction's token lasts 15): the video
    is posted in the channel by the bot, with the job's id as the nonce (Discord
    drops a repeat), and nothing more goes through the interaction.
    """
    ns = load_recipe("discord")
    fake.script_next(JobScript(processing_seconds=1800))
    fake.clock.autojump = False
    posted: list[tuple[float, Any]] = []

    async with bound_client(fake) as pb, ns["TransitionBot"](pb) as bot:
        http = ns["offline"](bot)
        real_request = http.request

        async def request(route, **kwargs):
            posted.append((fake.clock.time(), route.channel_id))
            return await real_request(route, **kwargs)

        http.request = request
        await bot.setup_hook()
        interaction = ns["RecordingInteraction"](bot)
        asked = fake.clock.time()
        await bot.tree.get_command("transition").callback(
            interaction, ns["attachment"](bot, START), ns["attachment"](bot, END)
        )
        await run_until_handled(fake, pb)

    assert len(interaction.sent) == 2  # (thinking), On it
    [(when, channel)] = posted
    assert channel == 555
    assert when - asked > 15 * 60
    job_id = re.fullmatch(ON_IT, interaction.sent[1])["job"]
    [line] = http.log
    assert re.fullmatch(rf"#555: <@7> \[{job_id}\.mp4: [1-9]\d* bytes\]", line)


@pytest.mark.anyio
async def test_discord_posts_carry_the_job_id_as_nonce(fake):
    """A handler run again (after a crash) sends the same nonce: Discord keeps one post."""
    ns = load_recipe("discord")
    fake.script_next(JobScript(outcome="failed"))
    payloads: list[dict[str, Any]] = []

    class Capturing(ns["RecordingHTTP"]):
        async def request(self, route, *, files=None, form=None, **kwargs):
            payloads.append(kwargs.get("json") or {})
            return await super().request(route, files=files, form=form, **kwargs)

    fake.clock.autojump = False
    async with bound_client(fake) as pb, ns["TransitionBot"](pb) as bot:
        bot.http = bot._connection.http = Capturing()
        await bot.setup_hook()
        interaction = ns["RecordingInteraction"](bot)
        await bot.tree.get_command("transition").callback(
            interaction, ns["attachment"](bot, START), ns["attachment"](bot, END)
        )
        await run_until_handled(fake, pb)

    job_id = re.fullmatch(ON_IT, interaction.sent[1])["job"]
    assert [(p["nonce"], p.get("enforce_nonce")) for p in payloads] == [(job_id, True)]
    assert "failed (GENERATION_FAILED)" in payloads[0]["content"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("size", "content_type"),
    [(500 * 1024**2, "video/mp4"), (11 * 1024**2, "image/png"), (1, None)],
)
async def test_discord_refuses_attachments_that_cannot_be_frames(
    fake, pb, size, content_type
):
    """Issue 25: a 500 MB video/mp4 attachment was paid for; now nothing is sent."""
    ns = load_recipe("discord")
    async with ns["TransitionBot"](pb) as bot:
        interaction = ns["RecordingInteraction"](bot)
        big = ns["attachment"](bot, END, size=size, content_type=content_type)
        await bot.tree.get_command("transition").callback(
            interaction, ns["attachment"](bot, START), big, None
        )
    assert interaction.sent[1:] == [
        f"{END.rsplit('/', 1)[-1]} must be an image of at most 10 MB."
    ]
    assert fake.count("POST", "/v1/jobs/*") == 0
    assert fake.jobs == {}


@pytest.mark.anyio
@pytest.mark.parametrize(("sync_commands", "syncs"), [(False, 0), (True, 1)])
async def test_discord_syncs_commands_only_when_asked(pb, sync_commands, syncs):
    """The command tree is synced with ``--sync`` only, not on every login."""
    ns = load_recipe("discord")
    bot = ns["TransitionBot"](pb, sync_commands=sync_commands)
    calls: list[None] = []

    async def sync() -> list[Any]:
        calls.append(None)
        return []

    bot.tree.sync = sync
    await bot.setup_hook()  # what login() runs
    await bot.close()

    assert syncs == len(calls)
    assert pb.closed  # closed first by bot.close()


@pytest.mark.anyio
async def test_discord_command_is_registered_with_its_options(pb):
    """The real CommandTree holds /transition with the options Discord will show."""
    ns = load_recipe("discord")
    bot = ns["TransitionBot"](pb)

    command = bot.tree.get_command("transition")

    assert isinstance(command, discord.app_commands.Command)
    assert not callable(command)  # hence command.callback in the tests
    assert [p.name for p in command.parameters] == ["start", "end", "prompt"]
    assert [p.required for p in command.parameters] == [True, True, False]
    assert command.parameters[0].type == discord.AppCommandOptionType.attachment
    await bot.close()


def test_discord_doubles_match_the_real_ones():
    """
    The interaction double offers only what the real Interaction has, called the
    same way; the HTTP double's ``request`` takes what discord.py passes it.
    """
    for name in ("client", "channel_id", "user", "filesize_limit", "response"):
        assert hasattr(discord.Interaction, name), name
    assert hasattr(discord.Interaction, "followup")
    inspect.signature(discord.InteractionResponse.defer).bind(None, thinking=True)
    inspect.signature(discord.Webhook.send).bind(None, "text")
    ns = load_recipe("discord")
    real = inspect.signature(discord.http.HTTPClient.request)
    double = inspect.signature(ns["RecordingHTTP"].request)
    assert list(real.parameters) == list(double.parameters)
    inspect.signature(discord.abc.Messageable.send).bind(
        None, "text", file=None, nonce="job_x"
    )


def test_both_pages_share_one_make_transition():
    """The PixelByte part of the two bot recipes is the same code, word for word."""
    blocks = [
        code
        for page in ("discord", "telegram")
        for _, code in python_blocks(RECIPES / f"{page}.md")
        if "async def make_transition(" in code
    ]

    assert len(blocks) == 2
    assert blocks[0] == blocks[1]
    assert "async def deliver(" in blocks[0]


@pytest.mark.anyio
async def test_make_transition_takes_image_bytes(fake):
    """Bytes (a downloaded photo) skip the URL check and are uploaded by the SDK."""
    ns = load_recipe("telegram")
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    lines: list[str] = []

    async def say(text: str) -> None:
        lines.append(text)

    async def send_video(path: Path, url: str) -> None:
        lines.append(f"video: {(await anyio.Path(path).stat()).st_size} bytes")

    async def handler(job: Any) -> None:
        await ns["deliver"](job, say=say, send_video=send_video)

    fake.clock.autojump = False
    async with bound_client(fake) as pb:
        pb.on_finished(handler)
        await pb.resume()
        job = await ns["make_transition"](pb, png, END, None, context={}, say=say)
        await run_until_handled(fake, pb)

    assert job is not None
    assert job.context == {}
    assert re.fullmatch(ON_IT, lines[0]), lines
    assert re.fullmatch(r"video: [1-9]\d* bytes", lines[1]), lines
    assert len(fake.uploads) == 1
