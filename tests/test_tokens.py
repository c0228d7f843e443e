"""Named API tokens (backend/tokens.py): the token file's lines, who a request's token names, what a
client sends; no engine needed (tests/test_cli_verbs.py serves them on the real engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.tokens import UNNAMED, TokenFileError, Tokens, first_token, parse_token_file
from tui.cli import resolve_token


def test_a_token_file_names_its_tokens_and_stays_compatible_with_a_bare_token():
    tokens = parse_token_file("# operators\nalice:a-secret\n\nci.bot-1:c:with:colons\n  \nbare-token\n")
    assert dict(tokens.by_name) == {"alice": "a-secret", "ci.bot-1": "c:with:colons", UNNAMED: "bare-token"}
    assert dict(parse_token_file("just-a-token\n").by_name) == {UNNAMED: "just-a-token"}
    # not a name before the colon (a space, too long): the whole line is a bare token
    assert dict(parse_token_file("not a name:x\n").by_name) == {UNNAMED: "not a name:x"}
    assert dict(parse_token_file("n" * 65 + ":x\n").by_name) == {UNNAMED: "n" * 65 + ":x"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("", "has no token", id="empty"),
        pytest.param("# only a comment\n\n", "has no token", id="comments-only"),
        pytest.param("alice:tok-1\nalice:tok-2\n", "line 2: the name 'alice' again", id="name-twice"),
        pytest.param("tok-1\ntok-2\n", "line 2: a second bare token", id="two-bare"),
        pytest.param("alice:tok-1\nbob:tok-1\n", "line 2: the same token", id="token-twice"),
    ],
)
def test_a_token_file_that_cannot_be_used_says_which_line_and_never_the_token(text: str, problem: str):
    with pytest.raises(TokenFileError) as raised:
        parse_token_file(text, "tokens.txt")
    assert str(raised.value).startswith("tokens.txt") and problem in str(raised.value)
    assert "tok-" not in str(raised.value)


def test_the_caller_is_the_name_of_the_token_the_request_carries():
    tokens = parse_token_file("alice:a-secret\nci:c-secret\n")
    assert tokens.caller("Bearer a-secret") == "alice"
    assert tokens.caller("Bearer c-secret") == "ci"
    assert tokens.caller("Bearer wrong") is None
    assert tokens.caller("") is None and tokens.caller("a-secret") is None
    assert Tokens.single("t").caller("Bearer t") == UNNAMED
    assert not Tokens({})


def test_a_client_sends_the_first_token_without_its_name(tmp_path: Path):
    assert first_token("# comment\n\nalice:a-secret\nci:c-secret\n") == "a-secret"
    assert first_token("bare\n") == "bare" and first_token("\n# none\n") is None
    token_file = tmp_path / "tokens"
    token_file.write_text("alice:a-secret\n")
    assert resolve_token(None, str(token_file), environ={}) == "a-secret"
