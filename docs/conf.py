"""Sphinx configuration: MyST Markdown pages, autodoc from docstrings, furo."""

from __future__ import annotations

import ast
import contextlib
import enum
import importlib.metadata
import inspect
import sys
from typing import TYPE_CHECKING, Any

import attrs
from sphinx.util import inspect as sphinx_inspect


if TYPE_CHECKING:
    from docutils.nodes import Element
    from sphinx.addnodes import pending_xref
    from sphinx.application import Sphinx
    from sphinx.environment import BuildEnvironment


project = "pixelbyte_async"
author = "pixelbyte_async developers"
copyright = "the pixelbyte_async developers"  # noqa: A001 -- Sphinx's setting name
release = importlib.metadata.version("pixelbyte-async")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "**/.*"]
templates_path: list[str] = []

# -- MyST ------------------------------------------------------------------------------

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# -- Docstrings ------------------------------------------------------------------------

# `Name` in a docstring is a cross-reference (the house style writes them that way).
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# -- Warnings --------------------------------------------------------------------------

nitpicky = True
# Names from the standard library and other projects: there is no intersphinx (the
# build must work offline), so references to them cannot resolve.  Every reference to
# our own public names must.
_ELSEWHERE = [
    *("aiohttp", "attrs", "anyio", "asyncio", "_asyncio", r"collections\.abc"),
    *("datetime", "enum", "fnmatch", "os", "pathlib", "random", "time", "types"),
    *("typing", "IO", "redis", r"concurrent\.futures"),
]
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(_ELSEWHERE)})(\..*)?"),
    (r"py:.*", r"(Any|Self|Path|Mapping|Callable|Awaitable|Iterable|Sequence)"),
    (r"py:.*", r"(AsyncIterator|AsyncGenerator|TracebackType|Literal|PathLike)"),
    (r"py:class", r"(int|float|str|bytes|bool|dict|list|tuple|None|object)"),
]
# Problems in the package's docstrings and signatures, reported for fixing there;
# each entry goes when its fix lands (the file and line are where to fix it).
nitpick_ignore = [
    # The batch's narrow view of its client (pixelbyte_async._seams): internal, and
    # `PixelByte` is what users pass.
    ("py:class", "BatchClient"),
    ("py:class", "pixelbyte_async._seams.BatchClient"),
    # What a Job needs from its client (pixelbyte_async._job_state): jobs are made by the
    # client, never by users.
    ("py:class", "pixelbyte_async._job_state.JobClient"),
    # What a hub offers the client (pixelbyte_async._sharing): a Protocol that
    # `pixelbyte_async.redis.RedisHub` satisfies; users pass a RedisHub.
    ("py:class", "Hub"),
    ("py:class", "pixelbyte_async._sharing.Hub"),
    # A hub's link to Redis (pixelbyte_async._hub._link): a RedisLedger is made by
    # `RedisHub.ledger()`, never by users.
    ("py:class", "pixelbyte_async._hub._link.RedisLink"),
    # What a ledger records (pixelbyte_async._ledger._records): users pass a path or a
    # ledger to PixelByte; the SDK makes and reads the records.
    ("py:class", "pixelbyte_async._ledger._records.Attempt"),
    ("py:class", "pixelbyte_async._ledger._records.Claim"),
    # Type aliases whose values are spelt out where they are used: a ledger spec
    # (a path, None or a ledger: PixelByte's *ledger*), a price's basis
    # (AuditOrphan.price_basis).
    ("py:class", "LedgerSpec"),
    ("py:class", "PriceBasis"),
    # The fake job's view of the fake server's clock (pixelbyte_async._fake._jobs):
    # the fake makes its jobs, users read them.
    ("py:class", "pixelbyte_async._fake._jobs.WallClock"),
    ("py:class", "PublishingHub"),
    # Type aliases of the receiver's signature (pixelbyte_async._signing and
    # _handoff): a secret or several (str | bytes | a sequence of them); a hook
    # called with each WebhookEvent.  Their Args sections say so in words.
    ("py:class", "Secrets"),
    ("py:class", "EventHook"),
    # What a receiver or hub feeds (pixelbyte_async._handoff): the client itself.
    ("py:class", "pixelbyte_async._handoff.WebhookObserver"),
    # What a slot group needs of its hub (pixelbyte_async._hub._leases): a RedisHub.
    ("py:class", "pixelbyte_async._hub._leases.SlotsHub"),
]

# Docstrings name public objects by their short names (`Job.wait` in the webhooks
# module, `FakePixelByte` in the client): resolve those in the public modules, in
# this order, and nowhere else (no fuzzy suffix matching that could link `requests`
# to the wrong class).
PUBLIC_MODULES = (
    "pixelbyte_async",
    "pixelbyte_async.testing",
    "pixelbyte_async.webhooks",
    "pixelbyte_async.redis",
)


def _resolve_public_name(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: Element
) -> Element | None:
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or target.startswith(PUBLIC_MODULES):
        return None
    domain = env.get_domain("py")
    for module in PUBLIC_MODULES:
        resolved = domain.resolve_xref(
            env,
            node["refdoc"],
            app.builder,
            node["reftype"],
            f"{module}.{target.removeprefix('~')}",
            node,
            contnode,
        )
        if resolved is not None:
            return resolved
    return None


# attrs classes: their ``__init__`` is generated, so autodoc's signature shows what
# attrs wrote there: the *converter's* parameter type for a converted field
# (``duration: object``) and, with ``autodoc_preserve_defaults``, the generated
# source's ``attr_dict['duration'].default`` for every default.  Show the field's
# declared type and its real default instead (``duration: int = 5``).


def _default_text(value: object) -> str:
    if isinstance(value, attrs.Factory):
        factory = value.factory
        if isinstance(factory, type) and not value.takes_self:
            return f"{factory.__name__}()"
        return "..."
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    text = repr(value)
    try:
        ast.parse(text, mode="eval")
    except SyntaxError:
        return "..."
    return text


def _as_declared(
    parameter: inspect.Parameter, field: attrs.Attribute[Any], namespace: dict[str, Any]
) -> inspect.Parameter:
    """*parameter* of an attrs ``__init__`` with *field*'s type and default."""
    if field.converter is not None and field.type is not None:
        declared = field.type
        if isinstance(declared, str):  # postponed annotations
            with contextlib.suppress(NameError):
                declared = eval(declared, namespace)  # noqa: S307 -- our own annotations
        parameter = parameter.replace(annotation=declared)
    if field.default is not attrs.NOTHING:
        default = sphinx_inspect.DefaultValue(_default_text(field.default))
        parameter = parameter.replace(default=default)
    return parameter


def _attrs_signature(  # noqa: PLR0917 -- the arguments of Sphinx's event
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str | None] | None:
    del app, name, options
    init = getattr(obj, "__init__", None)
    code = getattr(init, "__code__", None)
    if (
        what != "class"
        or signature is None
        or not attrs.has(obj)
        or not getattr(code, "co_filename", "").startswith("<attrs generated")
    ):
        return None
    fields = {field.alias: field for field in attrs.fields(obj)}
    namespace = vars(sys.modules[obj.__module__])
    sig = sphinx_inspect.signature(init, bound_method=True)
    parameters = [
        _as_declared(p, fields[p.name], namespace) if p.name in fields else p
        for p in sig.parameters.values()
    ]
    text = sphinx_inspect.stringify_signature(
        sig.replace(parameters=parameters),
        show_return_annotation=False,
        unqualified_typehints=True,
    )
    return text, return_annotation


def setup(app: Sphinx) -> None:
    """Register the resolver of short public names and the attrs signatures."""
    app.connect("missing-reference", _resolve_public_name)
    app.connect("autodoc-process-signature", _attrs_signature)


# -- HTML ------------------------------------------------------------------------------

html_theme = "furo"
html_title = f"pixelbyte_async {release}"
html_theme_options = {"navigation_with_keys": True}
