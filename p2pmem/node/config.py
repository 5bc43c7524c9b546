"""The serving node's configuration: flags > environment > file > defaults.

Every option of ``p2pmem serve`` is a setting, found by reading serve's own
argparse options (:func:`settings_from_parser`), so a new flag gets a config
key (``--max-peers`` -> ``max_peers``) and a variable (``P2PMEM_MAX_PEERS``)
without a line here, and the flag's own type function checks the value
wherever it came from. Keys with a dot (``relay.enabled``) live in a TOML
section (``[relay]``), so later parts of the node get their own tables.

The result is a frozen :class:`Config` that records, for each key, the value
and where it came from; ``p2pmem config show`` prints it. Any problem is a
:class:`ConfigError` (a usage error, exit 2) with one line naming the key and
the file or variable: the node does not start on a configuration it cannot
read, as it does not start on a bad flag.
"""

from __future__ import annotations

import argparse
import difflib
import json
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pmem import limits
from p2pmem.errors import P2pmemError, UsageError

CONFIG_FILE = "p2pmem.toml"  # in the home, unless --config or P2PMEM_CONFIG names another
CONFIG_ENV = "P2PMEM_CONFIG"
ENV_PREFIX = "P2PMEM_"
SOURCES = ("flag", "env", "file", "default")  # strongest first
MAX_DEPTH = 3  # a key's sections: [relay] holds relay.x; no deeper nesting is meant
NOT_SETTINGS = frozenset({"help", "home", "json", "config"})  # serve options that are not settings
# Flags whose key is not their name: --peer (repeatable) is the list "peers".
KEY_NAMES = {"peer": "peers"}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(UsageError):
    """A configuration that cannot be used: one line, exit status 2."""


@dataclass(frozen=True)
class Setting:
    """One configurable value: its TOML key, the serve flag it mirrors, the
    TOML type it takes, and how a string (flag, variable) becomes a value."""

    key: str
    dest: str
    flag: str
    kind: type  # str, int, float, bool or list (of str)
    default: Any
    parse: Callable[[str], Any]
    choices: tuple[str, ...] | None = None
    help: str = ""

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper().replace(".", "_")

    def check(self, text: str) -> Any:
        """``text`` as this setting's value, or a ValueError saying why not."""
        if self.choices is not None and text not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}: {text!r}")
        try:
            return self.parse(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError, P2pmemError) as exc:
            raise ValueError(str(exc) or f"invalid value {text!r}") from None


@dataclass(frozen=True)
class Entry:
    """A setting's effective value and where it came from: ``source`` is one
    of SOURCES, ``origin`` the flag, variable or file that gave it."""

    key: str
    dest: str
    value: Any
    source: str
    origin: str


@dataclass(frozen=True)
class Config:
    """The effective configuration of a node (immutable)."""

    file: Path
    file_found: bool
    entries: tuple[Entry, ...]

    def entry(self, key: str) -> Entry:
        for entry in self.entries:
            if entry.key == key:
                return entry
        raise KeyError(key)

    def __getitem__(self, key: str) -> Any:
        return self.entry(key).value

    def source(self, key: str) -> str:
        return self.entry(key).source

    def namespace(self, args: argparse.Namespace) -> argparse.Namespace:
        """A copy of ``args`` with every setting's flag destination set to its
        effective value (lists as lists, as argparse gives them)."""
        out = argparse.Namespace(**vars(args))
        for entry in self.entries:
            value = list(entry.value) if isinstance(entry.value, tuple) else entry.value
            setattr(out, entry.dest, value)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "file_found": self.file_found,
            "values": {
                e.key: {"value": list(e.value) if isinstance(e.value, tuple) else e.value,
                        "source": e.source, "origin": e.origin}
                for e in self.entries
            },
        }


# --- the settings, from serve's options -----------------------------------

def settings_from_parser(parser: argparse.ArgumentParser) -> tuple[Setting, ...]:
    """One Setting per option of ``parser`` (serve's, with their real
    defaults), except the options that are not settings (NOT_SETTINGS)."""
    out = []
    for action in parser._actions:  # argparse has no public list of a parser's options
        if action.dest in NOT_SETTINGS or not action.option_strings:
            continue
        out.append(_setting(action))
    return tuple(out)


def _setting(action: argparse.Action) -> Setting:
    flag = max(action.option_strings, key=len)
    key = KEY_NAMES.get(action.dest, action.dest)
    parse = action.type if callable(action.type) else str
    if action.nargs == 0:  # store_true
        kind: type = bool
    elif isinstance(action.default, list):  # action="append"
        kind = list
    elif isinstance(action.default, bool):
        kind = bool
    elif isinstance(action.default, (int, float)):
        kind = type(action.default)
    else:
        kind = str
    choices = tuple(str(c) for c in action.choices) if action.choices is not None else None
    default = tuple(action.default) if isinstance(action.default, list) else action.default
    return Setting(key=key, dest=action.dest, flag=flag, kind=kind, default=default,
                   parse=parse, choices=choices, help=action.help or "")


def suppress_defaults(parser: argparse.ArgumentParser) -> None:
    """Make the settings' flags leave the namespace alone unless given, so
    that a flag at its default value still counts as given."""
    for action in parser._actions:
        if action.dest not in NOT_SETTINGS and action.option_strings:
            action.default = argparse.SUPPRESS


# --- resolution ---------------------------------------------------------

def resolve(
    settings: tuple[Setting, ...], *, flags: Mapping[str, Any], environ: Mapping[str, str],
    file: Path, explicit: bool,
) -> Config:
    """The effective configuration. ``flags`` holds the destinations of the
    flags that were given (and only those); ``file`` is read if it exists
    (it must when ``explicit``, i.e. named by --config or P2PMEM_CONFIG)."""
    table = read_file(file, explicit=explicit)
    from_file = file_values(settings, table, file) if table is not None else {}
    entries = []
    for s in settings:
        if s.dest in flags:
            value = flags[s.dest]
            if isinstance(value, list):
                if len(value) > limits.MAX_CONFIG_LIST:
                    raise ConfigError(f"{s.flag}: given more than {limits.MAX_CONFIG_LIST} times")
                value = tuple(value)
            entries.append(Entry(s.key, s.dest, value, "flag", s.flag))
        elif s.env in environ:
            entries.append(Entry(s.key, s.dest, env_value(s, environ[s.env]), "env", s.env))
        elif s.key in from_file:
            entries.append(Entry(s.key, s.dest, from_file[s.key], "file", str(file)))
        else:
            entries.append(Entry(s.key, s.dest, s.default, "default", ""))
    return Config(file=file, file_found=table is not None, entries=tuple(entries))


def config_path(home: Path, given: Path | None, environ: Mapping[str, str]) -> tuple[Path, bool]:
    """The file to read and whether the user named it (then it must exist)."""
    if given is not None:
        return given, True
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]).expanduser(), True
    return home / CONFIG_FILE, False


def read_file(path: Path, *, explicit: bool) -> dict[str, Any] | None:
    """The parsed TOML of ``path``; None if it does not exist and was not
    named by the user."""
    try:
        with open(path, "rb") as f:
            data = f.read(limits.MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such configuration file") from None
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror or exc}") from None
    if len(data) > limits.MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over the limit of {limits.MAX_CONFIG_BYTES} bytes for a configuration")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None


def file_values(settings: tuple[Setting, ...], table: dict[str, Any], path: Path) -> dict[str, Any]:
    """Every key of the file checked against its setting: key -> value."""
    by_key = {s.key: s for s in settings}
    out = {}
    for key, value in _flatten(table, path):
        setting = by_key.get(key)
        if setting is None:
            near = difflib.get_close_matches(key, list(by_key), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"{path}: unknown key '{key}'{hint}")
        try:
            out[key] = _typed(setting, value)
        except ValueError as exc:
            raise ConfigError(f"{path}: key '{key}': {exc}") from None
    return out


def _flatten(table: dict[str, Any], path: Path, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    for name, value in table.items():
        key = prefix + name
        if isinstance(value, dict):
            if depth + 1 >= MAX_DEPTH:
                raise ConfigError(f"{path}: key '{key}': sections nest at most {MAX_DEPTH - 1} deep")
            yield from _flatten(value, path, key + ".", depth + 1)
        else:
            yield key, value


_TOML_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "an array of strings"}


def _typed(setting: Setting, value: Any) -> Any:
    """A TOML value as the setting's value: the TOML type must be the
    setting's, and the text goes through the flag's own check."""
    kind = setting.kind
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[kind]
    if not ok:
        raise ValueError(f"expected {_TOML_TYPES[kind]}, got {_toml_type(value)}")
    if kind is bool:
        return value
    if kind is list:
        if len(value) > limits.MAX_CONFIG_LIST:
            raise ValueError(f"more than {limits.MAX_CONFIG_LIST} items")
        return tuple(setting.check(v) for v in value)
    return setting.check(str(value))


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "an array holding a non-string"
    return {str: "a string", int: "an integer", float: "a float"}.get(type(value), f"a {type(value).__name__}")


def env_value(setting: Setting, text: str) -> Any:
    """A variable's text as the setting's value: lists are comma-separated,
    booleans 1/0, true/false, yes/no, on/off."""
    try:
        if setting.kind is bool:
            word = text.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ValueError(f"expected 1/0, true/false, yes/no or on/off: {text!r}")
            return word in _TRUE
        if setting.kind is list:
            items = [part.strip() for part in text.split(",") if part.strip()]
            if len(items) > limits.MAX_CONFIG_LIST:
                raise ValueError(f"more than {limits.MAX_CONFIG_LIST} items")
            return tuple(setting.check(item) for item in items)
        return setting.check(text)
    except ValueError as exc:
        raise ConfigError(f"environment variable {setting.env}: {exc}") from None


# --- showing it -----------------------------------------------------------

def render(config: Config) -> str:
    """The effective configuration as TOML (usable as a file), each value
    followed by a comment saying where it came from."""
    found = "" if config.file_found else " (not found)"
    lines = [f"# configuration file: {config.file}{found}"]
    section = ""
    rows: list[tuple[str, str]] = []
    for entry in sorted(config.entries, key=lambda e: "." in e.key):  # sections last
        head, _, name = entry.key.rpartition(".")
        if head != section:
            rows.append(("", ""))
            rows.append((f"[{head}]", ""))
            section = head
        where = entry.source if not entry.origin else f"{entry.source} {entry.origin}"
        text = f"{name} = {toml_value(entry.value)}" if entry.value is not None else f"# {name} (unset)"
        rows.append((text, where))
    width = max(len(text) for text, _ in rows)
    for text, where in rows:
        lines.append(f"{text:<{width}}  # {where}" if where else text)
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    # a TOML basic string: JSON's escapes are TOML's (DEL must be escaped too)
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
