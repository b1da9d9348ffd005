"""
The chat-bot recipes survive production: every failure reaches the user, and a stop
mid-job ends cleanly.

The code is the recipes' own, run from ``docs/recipes/{telegram,discord}.md``
against the real aiogram and discord.py (the ``recipes`` dependency group), with
``pb`` bound to a `FakePixelByte`: Telegram through aiogram's real ``Dispatcher``
(``dp.feed_update``) and a bot whose session records instead of sending, Discord
through a real ``discord.Client`` and its ``CommandTree``, calling the command's
``.callback`` with the page's interaction double.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import io
import logging
import re
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiogram.exceptions import TelegramEntityTooLarge
from aiogram.methods import SendVideo
from pixelbyte_async import PixelByte
from pixelbyte_async.testing import FakePixelByte, Fault, JobScript

from conftest import until


with warnings.catch_warnings():
    # discord.py imports the stdlib's audioop, deprecated in Python 3.11 and 3.12.
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import discord


RECIPES = Path(__file__).parent.parent / "docs" / "recipes"
_BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)

START = "https://example.com/sunrise.jpg"
END = "https://example.com/night.jpg"
ON_IT = r"On it: job (?P<job>job_\w+), about four minutes\."
VIDEO = r"video: [1-9]\d* bytes, caption .*|job_\w+\.mp4: [1-9]\d* bytes"


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """Return ``(first line, code)`` of every visible Python block of *page*."""
    text = page.read_text()
    return [
        (text.count("\n", 0, match.start("code")), match["code"])
        for match in _BLOCK.finditer(text)
    ]


def load_recipe(name: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    Run the definitions of ``docs/recipes/<name>.md`` in *namespace* (a fresh one).

    Blocks that need no top-level ``await`` are the recipe's code and its test
    doubles; the others are examples of use, which the docs tests run.
    """
    page = RECIPES / f"{name}.md"
    namespace = {} if namespace is None else namespace
    namespace.setdefault("__name__", f"recipe_{name}")
    for line, code in python_blocks(page):
        compiled = compile(
            "\n" * line + code,  # tracebacks point into the page
            str(page),
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )
        if not compiled.co_flags & inspect.CO_COROUTINE:
            exec(compiled, namespace)  # noqa: S102 -- our own docs
    return namespace


# -- one driver per bot: a command in, the chat's lines out --------------------------


async def ask_telegram(
    ns: dict[str, Any], pb: PixelByte, args: str, *, session: Any = None
) -> list[str]:
    """Send ``/transition ARGS`` through the real Dispatcher; return the answers."""
    bot = ns["Bot"](token="123456:not-a-real-token", session=session)
    if session is None:
        bot.session = ns["RecordingSession"]()
    await ns["dp"].feed_update(bot, ns["command"](f"/transition {args}"), pb=pb)
    await asyncio.gather(*ns["running"])
    return bot.session.log


async def ask_discord(
    ns: dict[str, Any], pb: PixelByte, args: str, *, filesize_limit: int = 10**7
) -> list[str]:
    """Call ``/transition`` through the real command tree; return the replies."""
    start, end, *prompt = args.split(maxsplit=2)
    async with ns["TransitionBot"](pb) as bot:
        interaction = ns["RecordingInteraction"](bot, filesize_limit=filesize_limit)
        await bot.tree.get_command("transition").callback(
            interaction,
            ns["attachment"](bot, start),
            ns["attachment"](bot, end),
            prompt[0] if prompt else None,
        )
        await asyncio.gather(*bot.jobs)
    assert interaction.sent[0] == "(thinking=True)"
    return interaction.sent[1:]


BOTS = {"telegram": ask_telegram, "discord": ask_discord}


@pytest.fixture(name="bot", params=sorted(BOTS))
def _bot(request) -> tuple[dict[str, Any], Callable[..., Awaitable[list[str]]]]:
    return load_recipe(request.param), BOTS[request.param]


# -- every failure is one line --------------------------------------------------------


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


def _too_slow(fake: FakePixelByte) -> None:
    fake.script_next(JobScript(processing_seconds=5000))


def _cdn_down(fake: FakePixelByte) -> None:
    fake.inject(
        Fault.status(503, "INTERNAL_ERROR"), origin="cdn", path="/outputs/*", times=None
    )


def _no_output(fake: FakePixelByte) -> None:
    fake.script_next(JobScript(output_shape="none"))


CASES = [
    ("ok", _nothing, f"{START} {END} dusk", [ON_IT, VIDEO]),
    (
        "http-frame",
        _nothing,
        f"http://example.com/a.jpg {END}",
        [r"Both frames must be https:// links to images\."],
    ),
    (
        "local-path",
        _nothing,
        f"/etc/passwd {END}",
        [r"Both frames must be https:// links to images\."],
    ),
    ("bad-input", _nothing, f"{START} {END} {'x' * 3000}", [r"I can't use that: .*"]),
    (
        "empty-balance",
        _empty_balance,
        f"{START} {END}",
        [r"The video budget is used up; please try again later\."],
    ),
    (
        "answer-lost-job-found",
        _lost_answer,
        f"{START} {END}",
        [
            r"PixelByte is slow to answer; checking whether the job started…",
            ON_IT,
            VIDEO,
        ],
    ),
    (
        "answer-lost-no-job",
        _no_job,
        f"{START} {END}",
        [
            r"PixelByte is slow to answer; checking whether the job started…",
            r"No job was started; please try again\.",
        ],
    ),
    ("refused", _refused, f"{START} {END}", [r"PixelByte said no: .*"]),
    (
        "job-failed",
        _fails,
        f"{START} {END}",
        [ON_IT, r"Job job_\w+ failed \(GENERATION_FAILED\); it was refunded\."],
    ),
    (
        "wait-timeout",
        _too_slow,
        f"{START} {END}",
        [ON_IT, r"Job job_\w+ is taking too long; I stopped watching it\."],
    ),
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
async def test_every_outcome_is_one_line_each(bot, fake, pb, case):
    """Each outcome ends in its own line; nothing is left at "On it" or unanswered."""
    ns, ask = bot
    setup, args, expected = case
    setup(fake)

    lines = await ask(ns, pb, args)

    assert len(lines) == len(expected), lines
    for pattern, line in zip(expected, lines, strict=True):
        assert re.fullmatch(pattern, line), (pattern, line)
    assert fake.ledger.double_charged() == []


@pytest.mark.anyio
@pytest.mark.parametrize("frame", ["http://example.com/a.jpg", "/etc/passwd", "a.jpg"])
async def test_frames_that_are_not_https_urls_send_nothing(bot, fake, pb, frame):
    """User-given frames are checked before a request is built: no upload, no submit."""
    ns, ask = bot

    await ask(ns, pb, f"{frame} {END}")

    assert fake.requests == []
    assert fake.cdn_requests == []


@pytest.mark.anyio
async def test_telegram_usage(fake, pb):
    """A command without two frames gets the usage line."""
    ns = load_recipe("telegram")
    bot = ns["Bot"](token="123456:not-a-real-token", session=ns["RecordingSession"]())

    await ns["dp"].feed_update(bot, ns["command"]("/transition"), pb=pb)

    assert bot.session.log == ["Usage: /transition START_URL END_URL [prompt]"]


@pytest.mark.anyio
async def test_telegram_refused_video_is_answered_and_logged(fake, pb, caplog):
    """Telegram refusing the upload still ends in a line, and the error is logged."""
    ns = load_recipe("telegram")

    class RefusingSession(ns["RecordingSession"]):
        async def make_request(self, bot, method, timeout=None):
            if isinstance(method, SendVideo):
                raise TelegramEntityTooLarge(method=method, message="Too Large")
            return await super().make_request(bot, method, timeout)

    with caplog.at_level(logging.ERROR):
        lines = await ask_telegram(ns, pb, f"{START} {END}", session=RefusingSession())

    assert re.fullmatch(ON_IT, lines[0])
    assert lines[1:] == ["Something went wrong; it has been logged."]
    assert "transition failed" in caplog.text


@pytest.mark.anyio
async def test_telegram_sends_a_link_over_the_upload_limit(fake, pb):
    """A video over Telegram's upload limit is sent as a link."""
    ns = load_recipe("telegram")
    ns["UPLOAD_LIMIT"] = 10

    lines = await ask_telegram(ns, pb, f"{START} {END}")

    assert re.fullmatch(r"Too big to send here; download it: http://\S+\.mp4", lines[1])


@pytest.mark.anyio
async def test_discord_sends_a_link_over_the_interactions_limit(fake, pb):
    """The limit is the interaction's own (``interaction.filesize_limit``)."""
    ns = load_recipe("discord")

    small = await ask_discord(ns, pb, f"{START} {END}", filesize_limit=10)
    large = await ask_discord(ns, pb, f"{START} {END}", filesize_limit=10**7)

    assert re.fullmatch(r"Too big to attach; here it is: http://\S+\.mp4", small[1])
    assert re.fullmatch(VIDEO, large[1])


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
        await asyncio.gather(*bot.jobs)
    assert interaction.sent[1:] == [
        f"{END.rsplit('/', 1)[-1]} must be an image of at most 10 MB."
    ]
    assert fake.count("POST", "/v1/jobs/*") == 0
    assert fake.jobs == {}


@pytest.mark.anyio
async def test_telegram_frames_are_checked_before_downloading():
    """Issue 25: photos and documents by what Telegram says of them, before paying."""
    from datetime import UTC, datetime

    from aiogram.types import Chat, Document, PhotoSize

    ns = load_recipe("telegram")
    bot = ns["Bot"](token="123456:not-a-real-token", session=ns["RecordingSession"]())
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


# -- stopping the bot mid-job ---------------------------------------------------------


async def _parked(fake: FakePixelByte, lines: list[str]) -> str:
    """Wait until the job was announced (its wait is parked); return its id."""
    await until(lambda: any(re.fullmatch(ON_IT, line) for line in lines))
    [job_id] = fake.jobs
    return job_id


@pytest.mark.anyio
async def test_telegram_stop_mid_job(fake, pb, caplog):
    """
    Polling stops: dp's shutdown ends the task (cancelled, with a message) before
    the client closes; the paid job goes on.
    """
    ns = load_recipe("telegram")
    fake.clock.autojump = False  # the job's wait stays parked until time moves
    bot = ns["Bot"](token="123456:not-a-real-token", session=ns["RecordingSession"]())
    await ns["dp"].feed_update(bot, ns["command"](f"/transition {START} {END}"), pb=pb)
    [task] = ns["running"]
    job_id = await _parked(fake, bot.session.log)

    with caplog.at_level(logging.WARNING):
        await ns["dp"].emit_shutdown(bot=bot, pb=pb)  # as start_polling does on stop
        await pb.aclose()  # main()'s `async with PixelByte()` ends after that

    assert task.cancelled()
    goodbye = f"The bot is restarting and stopped watching job {job_id}."
    assert bot.session.log[-1] == goodbye
    assert f"pixelbyte-async wait {job_id}" in caplog.text
    assert "ClientClosedError" not in caplog.text
    assert fake.jobs[job_id].cancelled_at is None  # the paid job was not cancelled
    fake.advance(300)
    assert fake.jobs[job_id].status == "completed"


@pytest.mark.anyio
async def test_discord_stop_mid_job(fake, pb, caplog):
    """
    bot.close() ends the bot's tasks (cancelled, with a message) before it
    disconnects, and before main() closes the client; the paid job goes on.
    """
    ns = load_recipe("discord")
    fake.clock.autojump = False
    bot = ns["TransitionBot"](pb)
    interaction = ns["RecordingInteraction"](bot)
    async with bot:
        await bot.tree.get_command("transition").callback(
            interaction, ns["attachment"](bot, START), ns["attachment"](bot, END)
        )
        [task] = bot.jobs
        job_id = await _parked(fake, interaction.sent)

        with caplog.at_level(logging.WARNING):
            await bot.close()  # what Ctrl-C, SIGTERM and `async with bot` lead to
    await pb.aclose()  # then main()'s `async with PixelByte()` ends

    assert task.cancelled()
    assert bot.is_closed()
    goodbye = f"The bot is restarting and stopped watching job {job_id}."
    assert interaction.sent[-1] == goodbye
    assert f"pixelbyte-async wait {job_id}" in caplog.text
    assert "ClientClosedError" not in caplog.text
    assert fake.jobs[job_id].cancelled_at is None


# -- Discord specifics ------------------------------------------------------------------


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


def test_discord_interaction_double_matches_the_real_one():
    """The double offers only what the real Interaction has, called the same way."""
    for name in ("client", "filesize_limit", "response", "followup"):
        assert hasattr(discord.Interaction, name), name
    inspect.signature(discord.InteractionResponse.defer).bind(None, thinking=True)
    inspect.signature(discord.Webhook.send).bind(None, "text")
    inspect.signature(discord.Webhook.send).bind(None, file=None)


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


@pytest.mark.anyio
async def test_make_transition_takes_image_bytes(fake, pb):
    """Bytes (a downloaded photo) skip the URL check and are uploaded by the SDK."""
    ns = load_recipe("telegram")
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    lines: list[str] = []

    async def say(text: str) -> None:
        lines.append(text)

    async def send_video(path: Path, url: str) -> None:
        lines.append(f"video: {(await anyio.Path(path).stat()).st_size} bytes")

    await ns["make_transition"](pb, png, END, None, say=say, send_video=send_video)

    assert re.fullmatch(ON_IT, lines[0]), lines
    assert re.fullmatch(r"video: [1-9]\d* bytes", lines[1]), lines
    assert len(fake.uploads) == 1
