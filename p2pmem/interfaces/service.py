"""``p2pmem service install``: a systemd unit that runs ``p2pmem serve`` for
one home (docs/operations.md, "Run as a service").

The unit is ``Type=notify``: ``serve`` sends ``READY=1`` once peers can
connect (p2pmem/node/sdnotify.py), so ``systemctl start`` returns when the
node serves and units ordered after it find it running. It restarts on
failure, names the home and the configuration file, and starts the very
``p2pmem`` that wrote it (its absolute path), so a unit written from a venv
runs that venv's p2pmem.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import pwd
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pmem.errors import P2pmemError, UsageError
from p2pmem.interfaces.output import print_json
from p2pmem.storage.keyfile import KEY_FILE

UNIT_NAME = "p2pmem.service"
SYSTEM_DIR = Path("/etc/systemd/system")

CheckConfig = Callable[[Path, bool], object]

# Hardening that every systemd can apply to a user's own manager too: no
# namespaces, which a user manager can only set up where the kernel allows
# unprivileged user namespaces (else the unit would fail to start).
COMMON_HARDENING = (
    "NoNewPrivileges=yes",
    "UMask=0077",
    "LockPersonality=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "SystemCallArchitectures=native",
)
# The system manager's sandbox: the node writes only its home (its store,
# index, control socket), reads the rest, and needs only IP and Unix sockets.
SYSTEM_HARDENING = (
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectSystem=strict",
    "ProtectHome=read-only",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictNamespaces=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
)


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("service", help="run the node as a systemd service")
    actions = p.add_subparsers(dest="service_command", metavar="ACTION", required=True,
                               parser_class=type(p))
    p = actions.add_parser("install", help="write a systemd unit for this home and say how to enable it")
    p.add_argument("--user", action="store_true",
                   help="a unit for your user's service manager (systemctl --user)")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="the configuration file the node reads (default p2pmem.toml in the home)")
    p.add_argument("--output", type=Path, default=None, metavar="PATH",
                   help=f"where to write the unit (default ~/.config/systemd/user/{UNIT_NAME} "
                        f"with --user, else {SYSTEM_DIR / UNIT_NAME})")
    p.add_argument("--dry-run", action="store_true", help="print the unit and write nothing")
    p.add_argument("--force", action="store_true", help="replace an existing unit that differs")
    common(p)


def cmd_service(args: argparse.Namespace, home: Path, check_config: CheckConfig) -> int:
    assert args.service_command == "install"
    home = _absolute(home, "home")
    if not (home / KEY_FILE).is_file():
        raise P2pmemError(f"no identity in {home}: run `p2pmem --home {home} init` first")
    config = _absolute(args.config, "--config") if args.config is not None else None
    # a configuration that `serve` would refuse is refused now, not at boot
    check_config(config or home / "p2pmem.toml", config is not None)
    unit = render_unit(program(), home, config, user=args.user)
    if args.dry_run:
        sys.stdout.write(unit)
        return 0
    dest = args.output if args.output is not None else default_path(args.user)
    written = write_unit(dest, unit, force=args.force)
    enable = enable_command(args.user, dest)
    if args.json:
        print_json({"unit": str(dest), "written": written, "enable": enable})
    else:
        print(f"{'wrote' if written else 'unchanged:'} {dest}")
        print(f"enable and start it with:\n  {enable}")
        if args.user:
            print(f"to keep it running while you are logged out: loginctl enable-linger {_user_name()}")
    return 0


def program() -> list[str]:
    """The command line of the running p2pmem, absolute: its console script,
    or this Python with ``-m p2pmem`` when started that way."""
    script = Path(sys.argv[0])
    if script.name == "p2pmem" and script.is_file():
        return [str(script.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "p2pmem"]


def default_path(user: bool) -> Path:
    if not user:
        return SYSTEM_DIR / UNIT_NAME
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user" / UNIT_NAME


def enable_command(user: bool, dest: Path) -> str:
    ctl = "systemctl --user" if user else "systemctl"
    standard = dest.absolute() == default_path(user).absolute()
    link = "" if standard else f"{ctl} link {dest.absolute()} && "
    return f"{link}{ctl} daemon-reload && {ctl} enable --now {dest.stem}"


def render_unit(command: list[str], home: Path, config: Path | None, *, user: bool) -> str:
    """The unit file's text."""
    argv = [*command, "--home", str(home), "serve"]
    if config is not None:
        argv += ["--config", str(config)]
    lines = [
        "# Written by `p2pmem service install`; docs/operations.md, \"Run as a service\".",
        "# listen, peers, replicate, metrics, log format...: "
        + (f"{config}" if config else f"{home / 'p2pmem.toml'} (if present)"),
        "[Unit]",
        f"Description=p2pmem node of {_escape(str(home))}",
        *([] if user else ["Wants=network-online.target", "After=network-online.target"]),
        "",
        "[Service]",
        "Type=notify",
        "ExecStart=" + " ".join(exec_quote(arg) for arg in argv),
        "Restart=on-failure",
        "RestartSec=5s",
        "TimeoutStopSec=30s",  # serve says goodbye to its peers and stops in a few seconds
        "Environment=PYTHONUNBUFFERED=1",
        *_owner(home, user),
        *COMMON_HARDENING,
        *([] if user else _system_sandbox(home, config)),
        "",
        "[Install]",
        f"WantedBy={'default.target' if user else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


def _system_sandbox(home: Path, config: Path | None) -> list[str]:
    """SYSTEM_HARDENING, writable home; a private /tmp only when neither the
    home nor the configuration lives in the /tmp it would hide."""
    hidden = [p for p in (home, config) if p is not None and _under_tmp(p)]
    rules = [r for r in SYSTEM_HARDENING if not (hidden and r.startswith("PrivateTmp="))]
    return [*rules, "ReadWritePaths=" + exec_quote(str(home))]


def _under_tmp(path: Path) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(tmp) for tmp in ("/tmp", "/var/tmp"))


def _owner(home: Path, user: bool) -> list[str]:
    """A system unit runs as the home's owner (its files are theirs, 0600)."""
    if user:
        return []
    info = home.stat()
    try:
        name = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        name = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return [f"User={_escape(name)}", f"Group={_escape(group)}"]


def _escape(text: str) -> str:
    """A value with systemd's specifier character (``%``) taken literally."""
    return text.replace("%", "%%")


def exec_quote(arg: str) -> str:
    """One argument of ``ExecStart=`` as systemd reads it back: ``%`` and
    ``$`` doubled (specifiers, variables), quoted when it holds a space, a
    quote or a backslash."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in " \t\"'\\;"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _absolute(path: Path, what: str) -> Path:
    text = str(path.expanduser().absolute())
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise UsageError(f"{what} {text!r} holds a control character, which a unit file cannot name")
    return Path(text)


def write_unit(dest: Path, unit: str, *, force: bool) -> bool:
    """Write ``unit`` to ``dest`` atomically (mode 0644, as systemd expects);
    False if the same unit is already there."""
    try:
        current = dest.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    except (OSError, UnicodeDecodeError) as exc:
        raise P2pmemError(f"cannot read the existing unit {dest}: {getattr(exc, 'strerror', None) or exc}") from None
    if current == unit:
        return False
    if current is not None and not force:
        raise P2pmemError(f"{dest} exists and differs; --force replaces it (or --output another path)")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(unit)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise P2pmemError(f"cannot write {dest}: {exc.strerror or exc}") from None
    return True


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
