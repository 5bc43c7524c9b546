"""Export opened messages as a Maildir, so any mail client can read an inbox.

Each message becomes one RFC 5322 mail with ``From``/``To`` addresses
``AGENTID@p2pmem.invalid`` (agent ids are lowercase base32, valid local parts;
``.invalid`` is reserved by RFC 2606 so nothing can ever be delivered there),
a ``Date`` from the message's HLC time, a ``Subject`` from its first line, and
``Message-ID: <record-id-hex@p2pmem.invalid>``.

Export is idempotent: a mail whose Message-ID (or ``X-P2pmem-Record-Id``) is
already in the Maildir is not written again, so ``inbox --maildir DIR`` can be
run repeatedly (e.g. from cron) against the same directory. It is not safe
against two exports into one Maildir at the same moment.
"""

from __future__ import annotations

import email.policy
import mailbox
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime
from pathlib import Path

from p2pmem.errors import P2pmemError
from p2pmem.model.identity import agent_id, short_id
from p2pmem.model.sealed import OpenedMessage

__all__ = ["DOMAIN", "message_id", "to_email", "write_maildir"]

DOMAIN = "p2pmem.invalid"
RECORD_ID_HEADER = "X-P2pmem-Record-Id"
MAX_SUBJECT = 78
MAX_DISPLAY_NAME = 64
NO_SUBJECT = "(no subject)"


def message_id(record_id_hex: str) -> str:
    """The Message-ID of the mail that carries a record."""
    return f"<{record_id_hex}@{DOMAIN}>"


def _one_line(text: str, limit: int) -> str:
    """``text`` made safe for a header: control characters (CR and LF
    included, which would otherwise allow header injection from a profile
    name) become spaces, whitespace runs collapse, and it is cut to ``limit``."""
    cleaned = "".join(" " if (ord(c) < 32 or 0x7F <= ord(c) < 0xA0) else c for c in text)
    return " ".join(cleaned.split())[:limit].strip()


def _subject(text: str) -> str:
    lines = text.strip().splitlines()
    first = _one_line(lines[0], MAX_SUBJECT) if lines else ""
    return first or NO_SUBJECT


def _address(key: bytes, from_id: Callable[[bytes], str], names: dict[bytes, str]) -> Address:
    display = _one_line(names.get(key, ""), MAX_DISPLAY_NAME) or short_id(key)
    return Address(display_name=display, username=from_id(key), domain=DOMAIN)


def to_email(
    message: OpenedMessage,
    *,
    from_id: Callable[[bytes], str] = agent_id,
    names: dict[bytes, str] | None = None,
) -> EmailMessage:
    """One opened message as an RFC 5322 mail (UTF-8 body, proper charset)."""
    names = names or {}
    mail = EmailMessage(policy=email.policy.default)
    mail["From"] = _address(message.sender, from_id, names)
    mail["To"] = _address(message.recipient, from_id, names)
    when = datetime.fromtimestamp(message.ms / 1000, tz=UTC)
    mail["Date"] = format_datetime(when)
    mail["Subject"] = _subject(message.text)
    mail["Message-ID"] = message_id(message.id)
    mail[RECORD_ID_HEADER] = message.id
    mail.set_content(message.text, charset="utf-8")
    return mail


def _known_ids(box: mailbox.Maildir) -> set[str]:
    """Message-IDs and record ids of the mails already in ``box``. Only headers
    are parsed; an unreadable file is skipped rather than failing the export."""
    known: set[str] = set()
    parser = BytesHeaderParser(policy=email.policy.compat32)
    for key in box.iterkeys():
        try:
            with box.get_file(key) as fp:
                headers = parser.parse(fp)
        except (OSError, KeyError):  # removed meanwhile, or unreadable
            continue
        for name in ("Message-ID", RECORD_ID_HEADER):
            value = headers.get(name)
            if value:
                known.add(str(value).strip().strip("<>").split("@", 1)[0].lower())
    return known


def write_maildir(
    directory: Path,
    messages: Iterable[OpenedMessage],
    *,
    from_id: Callable[[bytes], str] = agent_id,
    names: dict[bytes, str] | None = None,
) -> int:
    """Write each message not yet in the Maildir ``directory``; return how
    many were written. ``cur``, ``new`` and ``tmp`` are created (mode 0700:
    these are decrypted private messages) when missing. New mails go to
    ``new`` (unread), with the file time set to the message time so clients
    that sort by arrival show them in order."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise P2pmemError(f"cannot write a Maildir at {directory}: it exists and is not a directory")
    try:  # missing parents are created (Mail/p2pmem); one that cannot be is an error
        for sub in ("", "cur", "new", "tmp"):
            os.makedirs(directory / sub, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise P2pmemError(f"cannot write a Maildir at {directory}: {exc.strerror or exc}") from None
    box = mailbox.Maildir(directory, factory=None, create=False)
    known = _known_ids(box)
    written = 0
    for message in messages:
        rid = message.id.lower()
        if rid in known:
            continue
        mail = mailbox.MaildirMessage(to_email(message, from_id=from_id, names=names))
        mail.set_subdir("new")
        mail.set_date(message.ms / 1000)
        box.add(mail)
        known.add(rid)
        written += 1
    return written
