"""``betblock feeds validate --format FMT FILE``: parse one feed file offline and show what
would be accepted and every reject with its line and reason.

Owns the command's arguments, output and exit status: 0 when at least one entry was accepted
and the feed as a whole is sound, 1 when nothing was accepted or the feed failed (bad
checksum, bad signature, unparseable), 2 on a usage error or an unreadable file. Must not
import aiohttp, SQL or resolver code; the ``betblock`` CLI calls ``main`` with the arguments
after ``feeds validate``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from feeds.entry import FeedError
from feeds.formats import FORMATS

# File-level facts worth a line of output, in this order, when a format reports them.
_META_SHOWN = ("header", "version", "serial", "checksum", "signature", "origin", "encoding")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="betblock feeds validate",
        description="Parse a feed file and print the accepted count and every reject.",
    )
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="feed format")
    parser.add_argument("file", help="the feed file ('-' reads standard input)")
    parser.add_argument("--control", metavar="FILE", help="it-adm: the .sha-256 control file")
    parser.add_argument("--signature", metavar="FILE", help="ch-gespa: the detached .sign file")
    parser.add_argument("--key", metavar="FILE", help="ch-gespa: the agency's PEM public key")
    parser.add_argument("--column", metavar="NAME", help="csv: the name column; json: the name field")
    return parser


def main(argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command; returns the exit status rather than exiting."""
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage message
        return 0 if exc.code in (0, None) else 2
    problem = _misplaced_options(args)
    if problem:
        print(f"betblock feeds validate: error: {problem}", file=err)
        return 2
    try:
        data = _read(args.file)
        options = _options(args)
    except OSError as exc:
        print(f"betblock feeds validate: error: cannot read {exc.filename}: {exc.strerror}", file=err)
        return 2
    try:
        result = FORMATS[args.format](data, **options)
    except FeedError as exc:
        print(f"error: {exc}", file=err)
        return 1
    print(f"accepted: {len(result.entries)}", file=out)
    print(f"rejected: {len(result.rejects)}", file=out)
    for key in _META_SHOWN:
        value = result.meta.get(key)
        if value is not None and not isinstance(value, (list, dict)):
            print(f"{key}: {_shown(str(value))}", file=out)
    if result.meta.get("with_path"):
        # A listed page became a whole-host block: the operator should see where.
        lines = ", ".join(str(n) for n in result.meta["with_path"])
        print(f"url paths dropped on lines: {lines}", file=out)
    for reject in result.rejects:
        print(f"line {reject.line}: {reject.reason}: {_shown(reject.text)}", file=out)
    return 0 if result.entries else 1


def _misplaced_options(args: argparse.Namespace) -> str | None:
    if args.control is not None and args.format != "it-adm":
        return "--control applies to --format it-adm only"
    if (args.signature is not None or args.key is not None) and args.format != "ch-gespa":
        return "--signature and --key apply to --format ch-gespa only"
    if args.column is not None and args.format not in ("csv", "json"):
        return "--column applies to --format csv or json only"
    return None


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.control is not None:
        options["control"] = _read(args.control)
    if args.signature is not None:
        options["signature"] = _read(args.signature)
    if args.key is not None:
        options["public_key_pem"] = _read(args.key)
    if args.column is not None:
        options["column" if args.format == "csv" else "field"] = args.column
    return options


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def _shown(text: str) -> str:
    # A feed is untrusted input: control characters (terminal escapes) and undecodable bytes
    # are printed escaped, never raw.
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
