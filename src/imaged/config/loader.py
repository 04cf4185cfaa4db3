"""Reading the YAML file, with errors that name the file and the offending key."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import yaml
from pydantic import ValidationError

from imaged.config.models import Config
from imaged.registry.config import is_host_key


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the file and the key."""


def _shown(loc: tuple[int | str, ...], unknown: bool) -> tuple[int | str, ...]:
    """`loc` with the parts that may hold a secret replaced: a part holding an `@` (user:password@),
    a `registries.hosts` key that is no host (a URL, perhaps with credentials), and an unknown key
    under `auth` (a password under a misspelt name)."""
    out: list[int | str] = []
    for i, part in enumerate(loc):
        if isinstance(part, str):
            host_key = loc[i - 2 : i] == ("registries", "hosts") and not is_host_key(part)
            if "@" in part or host_key:
                part = "<a key not shown: it is no registry host>"
            elif unknown and i == len(loc) - 1 and "auth" in loc[:i]:
                part = "<a key not shown: under auth>"
        out.append(part)
    return tuple(out)


def _key(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _yaml_problem(e: yaml.YAMLError) -> str:
    """The parser's complaint and position, without the snippet of the file it would quote (that
    line may hold a password), nor the quoted token some complaints carry (`found undefined alias
    'Xk9...'` for an unquoted password starting with `*`)."""
    if isinstance(e, yaml.MarkedYAMLError):
        where = e.problem_mark or e.context_mark
        pos = f"line {where.line + 1}, column {where.column + 1}: " if where is not None else ""
        problem = e.problem or e.context or "syntax error"
        if any(word in problem for word in ("alias", "tag", "anchor")):
            # These quote the value itself: an unquoted password that starts with * or !.
            problem = re.sub(r"'[^']*'", "'...'", problem) + " (quote a value that starts with *, &, ! or %)"
        return f"{pos}{problem}"
    return type(e).__name__


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice: YAML keeps the last silently, and a second
    `verification:` section would drop the first one's rules without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _NoAliasLoader(_StrictLoader):
    """For text sent by a client (PolicyService.Test): anchors and aliases let a small document
    stand for a huge one (each alias of a rule is one more rule to compile), so none are taken."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases are not accepted here", event.start_mark
            )
        return super().compose_node(parent, index)  # type: ignore[no-untyped-call,no-any-return]


def parse_text(text: str, source: str = "<config>", *, aliases: bool = True) -> dict[str, Any]:
    """The YAML document as a mapping, not yet validated; `aliases=False` refuses anchors."""
    loader = _StrictLoader if aliases else _NoAliasLoader
    try:
        doc: Any = yaml.load(text, Loader=loader) if text.strip() else {}  # a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    return doc


def load_text(text: str, source: str = "<config>") -> Config:
    return validate(parse_text(text, source), source)


def validate(doc: dict[str, Any], source: str = "<config>") -> Config:
    """The configuration a parsed document describes (what `load_text` does after parsing)."""
    try:
        return Config.model_validate(doc)
    except RecursionError:
        raise ConfigError(f"{source}: invalid configuration: nested too deeply") from None
    except ValidationError as e:
        problems = []
        for err in e.errors():
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            loc = _shown(tuple(err["loc"]), err["type"] == "extra_forbidden")
            problems.append(f"  {_key(loc)}: {msg}")
        raise ConfigError(f"{source}: invalid configuration:\n" + "\n".join(problems)) from None


def load(path: str | pathlib.Path | None) -> Config:
    """Load `path`; None gives the defaults."""
    if path is None:
        return Config()
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read configuration: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    return load_text(text, str(p))
