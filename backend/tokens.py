"""The API's bearer tokens and their names: who acted, as revisions and events record it.

`hyperservice serve --token-file FILE` reads FILE as one token per line:

    alice:3f9c0e...      a named token: what its bearer changes is recorded as by "alice"
    ci:7d21aa...
    5b0e11...            a bare token (the file format before names; also --token, HYPERSERVICE_TOKEN):
                         recorded as by "token"

Blank lines and lines starting with `#` are skipped. A line is named when it is `NAME:TOKEN` with NAME
of letters, digits, `.`, `_` or `-` (at most 64); anything else is a bare token. Names are unique, and
so are tokens. A client (`--token-file` of the console and the CLI verbs) sends the first line's
token, its name left off, so the server's file serves its own clients too.

Token values are never logged, returned or put in an error message: only names are.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

UNNAMED = "token"  # who a bare (unnamed) token's bearer is, in revisions and events
_NAMED = re.compile(r"^([A-Za-z0-9._-]{1,64}):(.+)$")


class TokenFileError(ValueError):
    """The token file cannot be used (the message names the line, never a token)."""


@dataclass(frozen=True)
class Tokens:
    """The tokens a served API accepts, each with its bearer's name."""

    by_name: Mapping[str, str]  # name -> token

    @classmethod
    def single(cls, token: str) -> Tokens:
        """One bare token (--token, HYPERSERVICE_TOKEN, a one-line token file)."""
        return cls({UNNAMED: token})

    def caller(self, authorization: str) -> str | None:
        """The name of the token an `Authorization` header carries, None when it carries none of them.
        Every token is compared (in constant time each), so the answer's timing names none of them."""
        found = None
        given = authorization.encode()
        for name, token in self.by_name.items():
            if secrets.compare_digest(given, f"Bearer {token}".encode()):
                found = name
        return found

    def __bool__(self) -> bool:
        return bool(self.by_name)


def split_line(line: str) -> tuple[str, str]:
    """(name, token) of one line: `NAME:TOKEN`, or a bare token (named UNNAMED)."""
    line = line.strip()
    named = _NAMED.match(line)
    if named and named.group(2).strip():
        return named.group(1), named.group(2).strip()
    return UNNAMED, line


def parse_token_file(text: str, source: str = "the token file") -> Tokens:
    """Every token of a token file with its name; TokenFileError when there is none or one repeats."""
    by_name: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        name, token = split_line(raw)
        if name in by_name:
            what = "a second bare token" if name == UNNAMED else f"the name {name!r} again"
            raise TokenFileError(f"{source} line {number}: {what} (each name, and at most one bare token, once)")
        if token in by_name.values():
            raise TokenFileError(f"{source} line {number}: the same token as an earlier line (name each once)")
        by_name[name] = token
    if not by_name:
        raise TokenFileError(f"{source} has no token")
    return Tokens(by_name)


def first_token(text: str) -> str | None:
    """The token a client sends from a token file: its first token's, without the name."""
    for raw in text.splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            return split_line(raw)[1]
    return None
