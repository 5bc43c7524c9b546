"""``p2pmem doctor``, ``backup`` and ``restore``: thin handlers over
p2pmem/agent/maintenance.py and p2pmem/storage/backup.py (docs/operations.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from p2pmem.interfaces.output import print_json


def add_parsers(sub: Any, common: Any) -> None:
    p = sub.add_parser("doctor", help="check the home (store integrity, indexes, key file) and repair")
    p.add_argument("--repair", action="store_true",
                   help="fix what is safe to fix: file modes, the search index")
    common(p)
    p = sub.add_parser("backup", help="write a consistent snapshot of the home to one file")
    p.add_argument("file", type=Path, help="the backup file to write (a tar; it holds the private key)")
    common(p)
    p = sub.add_parser("restore", help="unpack a backup into a new, empty home")
    p.add_argument("file", type=Path, help="a file written by `p2pmem backup`")
    common(p)


def cmd_doctor(args: argparse.Namespace, home: Path) -> int:
    from p2pmem.agent.maintenance import doctor, report_json

    checks = doctor(home, repair=args.repair)
    report = report_json(home, checks)
    if args.json:
        print_json(report)
    else:
        for check in checks:
            print(check.line())
        if not report["healthy"]:
            print(f"p2pmem: problems remain in {home}", file=sys.stderr)
    return 0 if report["healthy"] else 1


def cmd_backup(args: argparse.Namespace, home: Path) -> int:
    from p2pmem.storage.backup import backup

    summary = backup(home, args.file)
    if args.json:
        print_json({"file": str(args.file), "agent": summary.agent, "records": summary.records,
                    "schema": summary.schema, "members": list(summary.members)})
    else:
        print(f"backed up {summary.records} records of {summary.agent} to {args.file} "
              f"({', '.join(summary.members)}; keep it private: it holds the key)")
    return 0


def cmd_restore(args: argparse.Namespace, home: Path) -> int:
    from p2pmem.storage.backup import restore

    summary = restore(args.file, home)
    if args.json:
        print_json({"home": str(home), "agent": summary.agent, "records": summary.records,
                    "schema": summary.schema})
    else:
        print(f"restored {summary.records} records of {summary.agent} into {home} (indexes rebuilt)")
    return 0
