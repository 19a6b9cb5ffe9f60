"""``betblock feeds validate --format FMT FILE``: parse one feed file offline and show what
would be accepted and every reject with its line and reason (``--summary N``: the count per
reason and the first N rejects; ``--json``: the same as one JSON document).

Owns the command's arguments, output and exit status: 0 when at least one entry was accepted
and the feed as a whole is sound, 1 when nothing was accepted, the feed failed (bad checksum,
bad signature, unparseable) or the file is over the size cap (``--max-bytes``, by default a
source's ``max_bytes``, 64 MiB: what the server would refuse, the CLI does not read whole
either), 2 on a usage error or an unreadable file. Must not
import aiohttp, SQL or resolver code; the ``betblock`` CLI calls ``main`` with the arguments
after ``feeds validate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any, BinaryIO, TextIO

from config.errors import BetblockError
from config.settings import SourceSettings
from feeds.entry import FeedError
from feeds.formats import FORMATS

MAX_BYTES: int = SourceSettings.model_fields["max_bytes"].default


class TooBig(BetblockError):
    """The input is over the size cap."""

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
    parser.add_argument("--origin", metavar="NAME", help="rpz: the zone's name (else the SOA owner, as BIND reads it)")
    parser.add_argument(
        "--max-bytes", type=int, default=MAX_BYTES, metavar="N", help=f"refuse a larger file (default {MAX_BYTES}, as the server)"
    )
    parser.add_argument("--summary", type=int, metavar="N", help="print the count per reason and the first N rejects only")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
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
        data = _read(args.file, args.max_bytes)
        options = _options(args)
    except OSError as exc:
        print(f"betblock feeds validate: error: cannot read {exc.filename}: {exc.strerror}", file=err)
        return 2
    except TooBig as exc:
        print(f"error: {exc}", file=err)
        return 1
    try:
        result = FORMATS[args.format](data, **options)
    except FeedError as exc:
        print(f"error: {exc}", file=err)
        return 1
    del data
    rejects = result.rejects if args.summary is None else result.rejects[: max(args.summary, 0)]
    reasons = Counter(r.reason for r in result.rejects)
    meta = {k: result.meta[k] for k in _META_SHOWN if result.meta.get(k) is not None and not isinstance(result.meta[k], (list, dict))}
    if args.json:
        doc: dict[str, Any] = {
            "accepted": len(result.entries),
            "rejected": len(result.rejects),
            "meta": meta,
            "url_paths_dropped": result.meta.get("with_path") or [],
            "reasons": dict(reasons.most_common()),
            "rejects": [{"line": r.line, "reason": r.reason, "text": r.text} for r in rejects],
        }
        json.dump(doc, out, indent=1, default=str)
        out.write("\n")
        return 0 if result.entries else 1
    print(f"accepted: {len(result.entries)}", file=out)
    print(f"rejected: {len(result.rejects)}", file=out)
    for key, value in meta.items():
        print(f"{key}: {_shown(str(value))}", file=out)
    if result.meta.get("with_path"):
        # A listed page became a whole-host block: the operator should see where.
        lines = ", ".join(str(n) for n in result.meta["with_path"][: args.summary])
        print(f"url paths dropped on lines: {lines}", file=out)
    if args.summary is not None:
        for reason, count in reasons.most_common():
            print(f"reason: {count}: {reason}", file=out)
    for reject in rejects:
        print(f"line {reject.line}: {reject.reason}: {_shown(reject.text)}", file=out)
    if args.summary is not None and len(rejects) < len(result.rejects):
        print(f"... {len(result.rejects) - len(rejects)} more rejects", file=out)
    return 0 if result.entries else 1


def _misplaced_options(args: argparse.Namespace) -> str | None:
    if args.control is not None and args.format != "it-adm":
        return "--control applies to --format it-adm only"
    if (args.signature is not None or args.key is not None) and args.format != "ch-gespa":
        return "--signature and --key apply to --format ch-gespa only"
    if args.column is not None and args.format not in ("csv", "json"):
        return "--column applies to --format csv or json only"
    if args.origin is not None and args.format != "rpz":
        return "--origin applies to --format rpz only"
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
    if args.origin is not None:
        options["origin"] = args.origin
    return options


def _read(path: str, cap: int = MAX_BYTES) -> bytes:
    """The file's bytes, never more than ``cap`` of them read: TooBig beyond."""
    if path == "-":
        return _capped(sys.stdin.buffer, cap, "standard input")
    with open(path, "rb") as f:
        return _capped(f, cap, path)


def _capped(f: BinaryIO, cap: int, what: str) -> bytes:
    data = f.read(cap + 1)
    if len(data) > cap:
        raise TooBig(f"{what} is over {cap} bytes (--max-bytes; the server refuses it too)")
    return data


def _shown(text: str) -> str:
    # A feed is untrusted input: control characters (terminal escapes) and undecodable bytes
    # are printed escaped, never raw.
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
