"""The ``betblock`` command line: serve, check-config, config-doc, feeds, lookup, token-hash, compliance, hits.

Owns argument parsing and exit codes only; the work is done by the composition root and the
owners of each subcommand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from config.settings import DEFAULT_CONFIG, ConfigError, field_table, load_settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="betblock", description="DNS resolver enforcing gambling blocklists")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the resolver in the foreground")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config file")
    serve.add_argument("--log-format", choices=["json", "console"], help="override log.format")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config file")
    sub.add_parser("config-doc", help="print the table of every config key (Markdown)")
    feeds = sub.add_parser("feeds", help="feed tools")
    feeds.add_argument("feeds_command", choices=["validate", "status", "history", "diff", "approve", "reject", "audit", "recover"])
    feeds.add_argument("rest", nargs=argparse.REMAINDER)
    # Listed for --help; main() hands their arguments to feeds.cli.
    sub.add_parser("lookup", help="why is a name blocked or not (betblock lookup NAME)", add_help=False)
    sub.add_parser("token-hash", help="make an agency push token and its SHA-256", add_help=False)
    token = sub.add_parser("admin-token", help="print the admin page's token (generated into the data directory if none)")
    token.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    sub.add_parser(
        "compliance", help="compliance report or self-test of an agency (betblock compliance --help)", add_help=False
    )
    # Listed for --help; main() hands everything after "hits" to hits.cli.
    sub.add_parser("hits", help="read, export and verify the hit log (betblock hits --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "hits":
        from hits.cli import main as hits_main

        return hits_main(argv[1:])
    if argv and argv[0] == "compliance":
        from betblock.compliance import main as compliance_main

        return compliance_main(argv[1:])
    if argv and argv[0] in ("lookup", "token-hash"):
        from feeds import cli as feeds_cli

        return (feeds_cli.lookup if argv[0] == "lookup" else feeds_cli.token_hash)(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from betblock import signals

        signals.hold()  # a stop signal from here on ends in the orderly stop (App.run takes them)
    if args.command == "config-doc":
        print("| key | default | description |\n|---|---|---|")
        for key, default, desc in field_table():
            print(f"| `{key}` | `{default}` | {desc} |")
        return 0
    if args.command == "feeds":
        if args.feeds_command != "validate":
            from feeds.cli import feeds as feeds_reports

            return feeds_reports([args.feeds_command, *args.rest])
        from feeds.validate import main as validate

        return validate(args.rest)
    try:
        settings = load_settings(args.config)
        # Lists must exist before we claim the config is good.
        for agency in settings.agencies:
            for path in agency.lists:
                if not settings.resolve_path(path).is_file():
                    raise ConfigError(f"invalid configuration in {args.config}:\n  agencies.{agency.id}.lists: file {path} not found")
        for path in settings.policy.allowlist_files:
            if not settings.resolve_path(path).is_file():
                raise ConfigError(f"invalid configuration in {args.config}:\n  policy.allowlist_files: file {path} not found")
        from feeds.cli import check_files

        problems = check_files(settings)
        if problems:
            raise ConfigError(f"invalid configuration in {args.config}:\n  " + "\n  ".join(problems))
        if not settings.upstream.addresses():
            raise ConfigError(
                f"invalid configuration in {args.config}:\n  upstream.servers: empty, and /etc/resolv.conf has no nameserver"
            )
    except ConfigError as exc:
        print(f"betblock: {exc}", file=sys.stderr)
        return 2
    if args.command == "admin-token":
        from betblock import access

        try:
            resolved, _ = access.with_admin_token(settings)
        except (ConfigError, OSError) as exc:
            print(f"betblock: {exc}", file=sys.stderr)
            return 2
        if resolved.http.admin_token is None:
            print("betblock: no admin token: http.admin_token and http.admin_token_file are both unset", file=sys.stderr)
            return 2
        print(resolved.http.admin_token.get_secret_value())
        return 0
    if args.command == "check-config":
        print(f"{args.config}: ok ({len(settings.agencies)} agencies)")
        return 0
    from betblock import access, logs
    from betblock.app import serve

    logs.configure(settings.log.level, args.log_format or settings.log.format, shared=True)  # with the DNS workers
    try:
        settings, token_file = access.with_admin_token(settings)
    except (ConfigError, OSError) as exc:
        print(f"betblock: {exc}", file=sys.stderr)
        return 2
    if settings.http.enabled:
        import structlog

        where = f"the token in {token_file} (or run `betblock admin-token`)" if token_file else "http.admin_token"
        if settings.http.admin_token is None:
            where = "nothing: admin routes are off (set http.admin_token or http.admin_token_file)"
        structlog.get_logger("betblock").info(f"admin page at {access.admin_url(settings)}, sign in with {where}")
    return serve(settings, args.config, log_format=args.log_format)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
