"""The serving node's configuration (p2pmem/node/config.py, docs/operations.md
"Configure"): flags > environment > file > defaults, ``config show`` naming
the source of every value, and one line (exit 2) for every bad configuration.

The precedence law is checked in-process (``cli.main``: hundreds of
combinations would take minutes as subprocesses); the end-to-end paths, a
real ``serve`` reading its file and a bad file refused, run as subprocesses.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmem import limits
from p2pmem.interfaces import cli
from p2pmem.node import config
from tests.netutil import NodeProc, cli_command

SETTINGS = config.settings_from_parser(cli._with(cli.serve_options))
KEYS = [s.key for s in SETTINGS]

_ports = st.integers(0, 65535)
_hosts = st.sampled_from(["127.0.0.1", "0.0.0.0", "[::1]", "node.example", "10.1.2.3"])
_addresses = st.builds(lambda h, p: f"{h}:{p}", _hosts, _ports)
# Values a user may give each key (any of them valid). A setting added
# later without a strategy here is still checked: it must show its default.
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "listen": _addresses,
    "peers": st.lists(_addresses, max_size=3).map(tuple),
    "replicate": st.sampled_from(["follows", "all"]),
    "max_peers": st.integers(1, limits.MAX_ACTIVE_PEERS),
    "push_rate": st.integers(limits.MIN_PUSH_BYTES_PER_S, limits.PUSH_BYTES_PER_S),
    "log_level": st.sampled_from(["debug", "info", "warning", "error"]),
    "log_format": st.sampled_from(["text", "json"]),
    "metrics": _addresses,
}


def run(argv: list[str], environ: dict[str, str]) -> tuple[int, str, str]:
    """``p2pmem ARGV`` in this process with exactly ``environ``: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, environ, clear=True), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def toml(value: Any) -> str:
    """A value written as TOML by hand (not by the code under test)."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, int):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def flag_args(setting: config.Setting, value: Any) -> list[str]:
    if setting.kind is list:
        return [a for v in value for a in (setting.flag, v)]
    return [setting.flag, str(value)]


def env_text(setting: config.Setting, value: Any) -> str:
    return ",".join(value) if setting.kind is list else str(value)


@st.composite
def layers(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    """For each key, the value given by flag, variable and file (or none)."""
    out: dict[str, dict[str, Any]] = {}
    for key in KEYS:
        strategy = VALUES.get(key)
        out[key] = {} if strategy is None else {
            where: draw(strategy) for where in ("flag", "env", "file") if draw(st.booleans())
        }
        if out[key].get("flag") == ():  # no --peer at all is no flag (an empty variable is a value)
            del out[key]["flag"]
    return out


def test_every_serve_option_is_a_setting_with_a_strategy():
    """serve's options become settings with no table to keep in step; the
    property below draws values for each (a new one needs a line in VALUES)."""
    parser = argparse.ArgumentParser(add_help=False)
    cli.serve_options(parser)
    flags = {a.dest for a in parser._actions if a.option_strings}
    assert {s.dest for s in SETTINGS} == flags
    assert {"listen", "peers", "replicate", "max_peers", "log_level", "log_format"} <= set(KEYS)
    missing = set(KEYS) - set(VALUES)
    assert not missing, f"add a value strategy for {missing}"
    assert all(s.env == "P2PMEM_" + s.key.upper() for s in SETTINGS)


@given(layers())
def test_flags_beat_environment_beat_file_beat_defaults(tmp_path_factory, given_values):
    home = tmp_path_factory.mktemp("home", numbered=True)
    argv = ["--home", str(home), "config", "show", "--json"]
    environ: dict[str, str] = {}
    lines = []
    expected: dict[str, tuple[Any, str]] = {}
    for setting in SETTINGS:
        layer = given_values[setting.key]
        if "flag" in layer:
            argv += flag_args(setting, layer["flag"])
        if "env" in layer:
            environ[setting.env] = env_text(setting, layer["env"])
        if "file" in layer:
            lines.append(f"{setting.key} = {toml(layer['file'])}")
        source = next((w for w in ("flag", "env", "file") if w in layer), "default")
        expected[setting.key] = (layer.get(source, setting.default), source)
    (home / config.CONFIG_FILE).write_text("\n".join(lines) + "\n")
    code, out, err = run(argv, environ)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["file"] == str(home / config.CONFIG_FILE) and shown["file_found"]
    for key, (value, source) in expected.items():
        entry = shown["values"][key]
        want = list(value) if isinstance(value, tuple) else value
        assert (entry["value"], entry["source"]) == (want, source), key
        origin = {"flag": next(s.flag for s in SETTINGS if s.key == key),
                  "env": "P2PMEM_" + key.upper(), "file": str(home / config.CONFIG_FILE), "default": ""}
        assert entry["origin"] == origin[source]
    # the text form names the same sources, one line per key
    code, text, _ = run([a for a in argv if a != "--json"], environ)
    assert code == 0
    for key, (_value, source) in expected.items():
        line = next(x for x in text.splitlines() if x.startswith(f"{key} =") or x.startswith(f"# {key} "))
        assert line.split("  # ")[-1].split()[0] == source, line


def test_the_text_form_is_a_configuration_file(tmp_path):
    """``config show`` prints TOML that, saved as the file, gives the same values."""
    environ = {"P2PMEM_PEERS": "a.example:1,[::1]:2", "P2PMEM_LOG_FORMAT": "json"}
    code, text, err = run(["--home", str(tmp_path), "config", "show", "--max-peers", "3",
                           "--listen", "0.0.0.0:7001"], environ)
    assert code == 0, err
    saved = tmp_path / "saved.toml"
    saved.write_text(text)
    code, out, err = run(["--home", str(tmp_path), "config", "show", "--json", "--config", str(saved)], {})
    assert code == 0, err
    values = {k: (v["value"], v["source"]) for k, v in json.loads(out)["values"].items()}
    assert values["max_peers"] == (3, "file") and values["listen"] == ("0.0.0.0:7001", "file")
    assert values["peers"] == (["a.example:1", "[::1]:2"], "file")
    assert values["log_format"] == ("json", "file")


BAD_FILES = [
    ('lisen = "127.0.0.1:1"\n', "unknown key 'lisen' (did you mean 'listen'?)"),
    ('max_peers = "8"\n', "key 'max_peers': expected an integer, got a string"),
    ("max_peers = true\n", "key 'max_peers': expected an integer, got a boolean"),
    ("max_peers = 0\n", "key 'max_peers': must be at least 1"),
    ("max_peers = 17\n", "key 'max_peers': must be at most 16"),
    ("push_rate = 1\n", "key 'push_rate': must be 262144 to 8388608"),
    ('listen = "nowhere"\n', "key 'listen': not an address"),
    ('listen = "127.0.0.1:65536"\n', "key 'listen': port out of range"),
    ('peers = "a:1"\n', "key 'peers': expected an array of strings, got a string"),
    ('peers = ["a:1", 2]\n', "key 'peers': expected an array of strings"),
    ('replicate = "some"\n', "key 'replicate': must be one of follows, all"),
    ('log_level = "loud"\n', "key 'log_level': must be one of debug, info, warning, error"),
    ("[relay]\nenabled = true\n", "unknown key 'relay.enabled'"),
    ("a = { b = { c = { d = 1 } } }\n", "key 'a.b.c': sections nest at most"),
    ("listen = \n", "not valid TOML"),
    ("peers = " + "[" * 5000 + "]" * 5000 + "\n", ""),
    ("x" * (limits.MAX_CONFIG_BYTES + 1), f"over the limit of {limits.MAX_CONFIG_BYTES} bytes"),
    (b"listen = \"\xff\"\n", "not UTF-8"),
    ("peers = [" + ", ".join(['"a:1"'] * (limits.MAX_CONFIG_LIST + 1)) + "]\n",
     f"key 'peers': more than {limits.MAX_CONFIG_LIST} items"),
]


@pytest.mark.parametrize(("content", "message"), BAD_FILES, ids=range(len(BAD_FILES)))
def test_a_bad_file_is_one_line_naming_the_key_and_the_file(tmp_path, content, message):
    path = tmp_path / config.CONFIG_FILE
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for command in (["config", "show"], ["serve"]):
        code, out, err = run(["--home", str(tmp_path), *command], {})
        assert (code, out) == (2, ""), err
        assert err.count("\n") == 1 and err.startswith(f"p2pmem: {path}: "), err
        assert message in err, err


BAD_ENV = [
    ({"P2PMEM_MAX_PEERS": "many"}, "environment variable P2PMEM_MAX_PEERS: not a number"),
    ({"P2PMEM_PEERS": "a:1,b"}, "environment variable P2PMEM_PEERS: not an address"),
    ({"P2PMEM_LOG_FORMAT": "xml"}, "environment variable P2PMEM_LOG_FORMAT: must be one of text, json"),
    ({"P2PMEM_CONFIG": "/nonexistent/p2pmem.toml"}, "/nonexistent/p2pmem.toml: no such configuration file"),
]


@pytest.mark.parametrize(("environ", "message"), BAD_ENV, ids=range(len(BAD_ENV)))
def test_a_bad_variable_is_one_line_naming_it(tmp_path, environ, message):
    code, out, err = run(["--home", str(tmp_path), "config", "show"], environ)
    assert (code, out) == (2, "") and err.count("\n") == 1 and message in err, err


def test_a_missing_default_file_is_no_error_but_a_named_one_is(tmp_path):
    code, out, _ = run(["--home", str(tmp_path), "config", "show", "--json"], {})
    assert code == 0 and json.loads(out)["file_found"] is False
    assert all(v["source"] == "default" for v in json.loads(out)["values"].values())
    code, _, err = run(["--home", str(tmp_path), "config", "show", "--config", str(tmp_path / "x.toml")], {})
    assert code == 2 and err == f"p2pmem: {tmp_path / 'x.toml'}: no such configuration file\n"
    code, _, err = run(["--home", str(tmp_path), "config", "show", "--config", str(tmp_path)], {})
    assert code == 2 and "cannot read the configuration" in err and err.count("\n") == 1


def test_a_flag_given_at_its_default_value_still_wins(tmp_path):
    """``--replicate follows`` over a file saying ``all``: the flag was given."""
    (tmp_path / config.CONFIG_FILE).write_text('replicate = "all"\nmax_peers = 4\n')
    code, out, err = run(["--home", str(tmp_path), "config", "show", "--json", "--replicate", "follows",
                          "--max-peers", str(limits.MAX_ACTIVE_PEERS)], {})
    assert code == 0, err
    values = json.loads(out)["values"]
    assert values["replicate"] == {"value": "follows", "source": "flag", "origin": "--replicate"}
    assert values["max_peers"]["source"] == "flag"


def test_sections_hold_dotted_keys(tmp_path):
    """Room for later parts ([relay], [bootstrap]): a setting keyed
    ``relay.enabled`` is read from its table and from P2PMEM_RELAY_ENABLED."""
    relay = config.Setting(key="relay.enabled", dest="relay_enabled", flag="--relay", kind=bool,
                           default=False, parse=str)
    settings = (*SETTINGS, relay)
    path = tmp_path / "p.toml"
    path.write_text('listen = "0.0.0.0:1"\n[relay]\nenabled = true\n')
    cfg = config.resolve(settings, flags={}, environ={}, file=path, explicit=True)
    assert cfg["relay.enabled"] is True and cfg.source("relay.enabled") == "file"
    assert relay.env == "P2PMEM_RELAY_ENABLED"
    cfg = config.resolve(settings, flags={}, environ={"P2PMEM_RELAY_ENABLED": "off"}, file=path, explicit=True)
    assert cfg["relay.enabled"] is False and cfg.source("relay.enabled") == "env"
    assert "[relay]\nenabled = false" in config.render(cfg)
    with pytest.raises(config.ConfigError, match="P2PMEM_RELAY_ENABLED: expected 1/0"):
        config.resolve(settings, flags={}, environ={"P2PMEM_RELAY_ENABLED": "maybe"}, file=path, explicit=True)


def test_the_result_is_frozen(tmp_path):
    cfg = config.resolve(SETTINGS, flags={"listen": "0.0.0.0:2"}, environ={}, file=tmp_path / "none",
                         explicit=False)
    with pytest.raises(AttributeError):
        cfg.entries = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.entry("listen").value = "x"  # type: ignore[misc]
    assert isinstance(cfg["peers"], tuple)


# --- end to end: real processes -------------------------------------------

def _serve_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PMEM_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _ready_address(home: Path, *args: str, env: dict[str, str]) -> str:
    """Start ``serve --json ARGS`` for ``home``, read its address, stop it."""
    proc = subprocess.Popen(cli_command(home, "serve", "--json", *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    node = NodeProc(home)
    node.proc = proc
    try:
        return json.loads(node._read_ready_line(20.0))["address"]
    finally:
        node.kill()
        assert proc.stderr is not None
        proc.stderr.close()


def test_serve_listens_where_the_file_then_the_environment_then_the_flag_says(tmp_path):
    home = tmp_path / "home"
    init = subprocess.run(cli_command(home, "init"), capture_output=True, text=True, env=_serve_env())
    assert init.returncode == 0, init.stderr
    (home / config.CONFIG_FILE).write_text('listen = "127.0.0.2:0"\nmax_peers = 2\n')
    assert _ready_address(home, env=_serve_env()).startswith("127.0.0.2:")
    env = _serve_env(P2PMEM_LISTEN="127.0.0.3:0")
    assert _ready_address(home, env=env).startswith("127.0.0.3:")
    assert _ready_address(home, "--listen", "127.0.0.4:0", env=env).startswith("127.0.0.4:")


def test_serve_refuses_a_bad_file_before_opening_the_home(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("max_peers = -1\n")
    proc = subprocess.run(cli_command(tmp_path / "nohome", "serve", "--config", str(bad)),
                          capture_output=True, text=True, env=_serve_env(), timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"p2pmem: {bad}: key 'max_peers': must be at least 1: '-1'\n"
    assert not (tmp_path / "nohome").exists()


def test_config_show_needs_no_home(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "p2pmem", "--home", str(tmp_path / "none"), "config", "show"],
                          capture_output=True, text=True, env=_serve_env(P2PMEM_MAX_PEERS="5"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "max_peers = 5" in proc.stdout and "env P2PMEM_MAX_PEERS" in proc.stdout
