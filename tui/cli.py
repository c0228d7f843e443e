"""The `hyperservice` command: the console (default) or `serve`, the backend as a daemon."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperservice",
        description="Operator console for load-balanced, replicated container services on Docker.",
    )
    parser.add_argument("--api", metavar="URL", help="attach to a backend started with `hyperservice serve`")
    parser.add_argument("--token", metavar="T", default=os.environ.get("HYPERSERVICE_TOKEN"),
                        help="bearer token of that backend (or HYPERSERVICE_TOKEN)")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the backend as a daemon: HTTP API + reconciler")
    serve.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8765",
                       help="address to serve on (default 127.0.0.1:8765, loopback only)")
    serve.add_argument("--token", metavar="T", default=os.environ.get("HYPERSERVICE_TOKEN"),
                       help="require 'Authorization: Bearer T' on every request")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from backend.server import parse_listen, serve

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            print(f"hyperservice: {exc}", file=sys.stderr)
            return 2
        from backend.store import DataDirInUse, DataDirUnsafe

        try:
            serve(args.listen, args.token)
        except (DataDirInUse, DataDirUnsafe) as exc:  # say it in one line, no traceback
            print(f"hyperservice: {exc}", file=sys.stderr)
            return 1
        return 0

    from tui.app import ConsoleApp

    app = ConsoleApp(api_url=args.api, token=args.token)
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
