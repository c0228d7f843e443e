"""The `hyperservice` command: the console (default), `serve` (the backend as a daemon), or one of the
scriptable verbs (`create`, `ls`, `inspect`, `scale`, ...: tui/cli_verbs.py).

Global options (`--api`, `--token`, `--token-file`) are accepted before or after the verb: they are
declared on the top-level parser and again on each verb's parser with SUPPRESS defaults, so a verb
never overwrites what was given before it. The token comes from `--token`, else `--token-file` (its
first token; a `NAME:TOKEN` line sends TOKEN), else `HYPERSERVICE_TOKEN`. `serve --token-file` accepts
every token of the file, named or bare (backend/tokens.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from backend.tokens import first_token

TOKEN_ENV = "HYPERSERVICE_TOKEN"


class UsageError(Exception):
    """A command line that cannot be acted on (printed, exit status 2)."""


def _add_global_options(parser: argparse.ArgumentParser, on_verb: bool) -> None:
    # On a verb's parser the defaults are SUPPRESS: an option missing after the verb leaves the value
    # given before it alone (argparse would otherwise overwrite it with the sub-parser's default).
    default = argparse.SUPPRESS if on_verb else None
    parser.add_argument("--api", metavar="URL", default=default,
                        help="attach to a backend started with `hyperservice serve`")
    parser.add_argument("--token", metavar="T", default=default,
                        help=f"bearer token of the backend (or {TOKEN_ENV}); prefer --token-file: "
                             "a token on the command line shows in `ps`")
    parser.add_argument("--token-file", metavar="FILE", default=default,
                        help="read the bearer token from FILE (its first line; `NAME:TOKEN` sends TOKEN). "
                             "serve: every line is a token, `NAME:TOKEN` names its bearer in revisions and events")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperservice",
        description="Operator console for load-balanced, replicated container services on Docker.",
    )
    _add_global_options(parser, on_verb=False)
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the backend as a daemon: HTTP API + reconciler")
    _add_global_options(serve, on_verb=True)
    serve.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8765",
                       help="address to serve on (default 127.0.0.1:8765, loopback only)")
    serve.add_argument("--allowed-host", metavar="NAME", action="append", default=[],
                       help="a DNS name clients may use to reach this backend (the Host header), e.g. "
                            "behind a reverse proxy; repeatable. The listen address is always allowed")
    serve.add_argument("--insecure", action="store_true",
                       help="serve beyond loopback without a token (only on a network you trust)")
    from tui.cli_verbs import add_verb_parsers

    add_verb_parsers(commands, lambda verb, on_verb: _add_global_options(verb, on_verb=on_verb))
    return parser


def resolve_token(token: str | None, token_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The bearer token: --token, else the first token of --token-file (without its name), else
    HYPERSERVICE_TOKEN."""
    if token is not None and token_file is not None:
        raise UsageError("give --token or --token-file, not both")
    if token is not None:
        if not token.strip():
            raise UsageError("--token is empty")
        return token
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --token-file {token_file}: {exc}") from None
        value = first_token(text)
        if not value:
            raise UsageError(f"--token-file {token_file} is empty")
        return value
    value = (os.environ if environ is None else environ).get(TOKEN_ENV, "")
    return value or None


def _check_settings() -> str | None:
    """Why the backend's settings (HYPERSERVICE_*, config file) are unusable, or None."""
    from pydantic import ValidationError

    from backend.settings import Settings, describe_settings_error

    try:
        Settings()
    except ValidationError as exc:
        return describe_settings_error(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad command line (2, argparse said why on stderr)
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
    try:
        token = resolve_token(args.token, args.token_file)
    except UsageError as exc:
        print(f"hyperservice: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from backend.server import Refused, parse_listen, serve
        from backend.tokens import TokenFileError, Tokens, parse_token_file

        tokens: Tokens | None = Tokens.single(token) if token else None
        if args.token_file is not None:
            try:  # read already by resolve_token: the file exists and has a first token
                tokens = parse_token_file(Path(args.token_file).read_text(encoding="utf-8"), args.token_file)
            except (OSError, UnicodeDecodeError, TokenFileError) as exc:
                print(f"hyperservice: cannot use --token-file {args.token_file}: {exc}", file=sys.stderr)
                return 2

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            print(f"hyperservice: {exc}", file=sys.stderr)
            return 2
        from backend.store import DataDirInUse, DataDirUnsafe

        problem = _check_settings()
        if problem:
            print(f"hyperservice: {problem}", file=sys.stderr)
            return 2
        try:
            serve(args.listen, tokens, extra_hosts=args.allowed_host, insecure=args.insecure)
        except Refused as exc:
            print(f"hyperservice: {exc}", file=sys.stderr)
            return 2
        except (DataDirInUse, DataDirUnsafe) as exc:  # say it in one line, no traceback
            print(f"hyperservice: {exc}", file=sys.stderr)
            return 1
        return 0

    if not args.api:
        problem = _check_settings()
        if problem:
            print(f"hyperservice: {problem}", file=sys.stderr)
            return 2

    if args.command:
        from tui.cli_verbs import run_verb

        return run_verb(args, token)

    from tui.app import ConsoleApp

    app = ConsoleApp(api_url=args.api, token=token)
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
