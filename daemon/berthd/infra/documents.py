"""Reading OCCO's YAML documents: safe loading only, bounded, with `!yaml_import` and `!text_import`
confined to the importing file's folder.

A document comes from a client, so nothing in it may make berthd do more than read it: PyYAML's safe
loader (no Python objects), at most `MAX_BYTES` per file and `MAX_IMPORTS` imports in all, and at most
`MAX_NODES` values once aliases are followed (a "billion laughs" document is refused, not expanded).
An import names a file relative to the importing file's folder (`file://name` or `name`); an absolute
path, a `..` or a link that leads outside the folder is refused. Imports are opened by `opener`, which
reads with the caller's rights (see `berthd.sources.caller`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from berthd.sources.caller import Caller, NotReadable, open_file

MAX_BYTES = 1 << 20
MAX_IMPORTS = 32
MAX_NODES = 100_000

Opener = Callable[[str], bytes]
"""Reads the file at an absolute path (with the caller's rights), raising DocumentError when it cannot."""


class DocumentError(ValueError):
    """A document berthd refuses; the message names the offending key or line, never the file's text."""


@dataclass
class _Reading:
    folder: str | None  # the importing file's folder (None: an inline document, which may not import)
    opener: Opener | None
    imports: list[int] = field(default_factory=lambda: [0])


def load(text: bytes | str, *, folder: str | None = None, opener: Opener | None = None) -> Any:
    """The document's value. `folder` and `opener` allow imports relative to `folder`."""
    return _load(text, _Reading(folder, opener))


def _load(text: bytes | str, reading: _Reading) -> Any:
    import yaml  # lazily: only the infrastructure commands need it

    if len(text) > MAX_BYTES:
        raise DocumentError(f"the document is larger than {MAX_BYTES} bytes")

    class Loader(yaml.SafeLoader):
        pass

    def yaml_import(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        return _load(_read_import(loader, node, reading), reading)

    def text_import(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        return _read_import(loader, node, reading).decode("utf-8", "replace")

    Loader.add_constructor("!yaml_import", yaml_import)
    Loader.add_constructor("!text_import", text_import)
    try:
        value = yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader with two constructors of ours
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise DocumentError(f"invalid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError as exc:
        raise DocumentError(f"invalid YAML: {type(exc).__name__}") from None
    check_size(value)
    return value


def _read_import(loader: Any, node: Any, reading: _Reading) -> bytes:
    import yaml

    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        spec = loader.construct_mapping(node)
        name = spec.get("url")
    else:
        name = loader.construct_scalar(node)
    if not isinstance(name, str) or not name:
        raise DocumentError(f"line {line}: an import names a file (url: file://NAME)")
    if reading.folder is None or reading.opener is None:
        raise DocumentError(f"line {line}: an inline document cannot import files")
    relative = name.removeprefix("file://")
    parts = relative.split("/")
    if relative.startswith("/") or ".." in parts or "://" in relative:
        raise DocumentError(f"line {line}: import {name!r} leaves the importing file's folder")
    reading.imports[0] += 1
    if reading.imports[0] > MAX_IMPORTS:
        raise DocumentError(f"line {line}: more than {MAX_IMPORTS} imports")
    path = os.path.join(reading.folder, *[p for p in parts if p not in ("", ".")])
    return reading.opener(path)


def check_size(value: Any) -> None:
    """At most MAX_NODES values, aliases counted each time they are used (iterative, bounded)."""
    pending, seen = [value], 0
    while pending:
        item = pending.pop()
        seen += 1
        if seen > MAX_NODES:
            raise DocumentError(f"the document holds more than {MAX_NODES} values (aliases counted)")
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def read_confined(fd: int, folder: str, shown: str) -> bytes:
    """The bytes of an opened file that must lie in `folder` (links resolved): what the descriptor
    really is, asked of the kernel, not the path it was opened by. Closes `fd`."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
        root = os.path.realpath(folder)
        if not real.startswith(root.rstrip("/") + "/"):
            raise DocumentError(f"import {shown!r} leaves the importing file's folder")
        data = os.read(fd, MAX_BYTES + 1)
        chunks = [data]
        while data and sum(map(len, chunks)) <= MAX_BYTES:
            data = os.read(fd, MAX_BYTES + 1)
            chunks.append(data)
        body = b"".join(chunks)
        if len(body) > MAX_BYTES:
            raise DocumentError(f"{shown} is larger than {MAX_BYTES} bytes")
        return body
    finally:
        os.close(fd)


def caller_opener(caller: Caller, folder: str) -> Opener:
    """Imports read with the caller's rights, each confined to `folder` (links resolved)."""

    def read(path: str) -> bytes:
        shown = os.path.relpath(path, folder)
        try:
            fd = open_file(caller, path, shown)
        except NotReadable as exc:
            raise DocumentError(str(exc)) from None
        return read_confined(fd, folder, shown)

    return read


def load_file(caller: Caller, path: str) -> Any:
    """The document at absolute `path`, read with the caller's rights, its imports from its folder."""
    if not os.path.isabs(path):
        raise DocumentError(f"{path!r} is not an absolute path")
    folder = os.path.dirname(os.path.normpath(path))
    shown = os.path.basename(path)
    try:
        fd = open_file(caller, path, path)
    except NotReadable as exc:
        raise DocumentError(str(exc)) from None
    return load(read_confined(fd, folder, shown), folder=folder, opener=caller_opener(caller, folder))
