"""Token discovery follows Ray's order; failures name the source that was tried."""

from pathlib import Path

import pytest
from facetrain.jobs.ray.auth import ClusterToken, TokenError, describe_auth_failure, find_token


def _home_with_token(tmp_path: Path, text: str | None) -> Path:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    if text is not None:
        (home / ".ray" / "auth_token").write_text(text)
    return home


def test_env_token_wins_over_path_and_default_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-path\n")
    home = _home_with_token(tmp_path, "from-home")
    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert find_token(env, home) == ClusterToken("from-env", "RAY_AUTH_TOKEN")


def test_path_wins_over_default_file_and_is_stripped(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("  from-path\n")
    home = _home_with_token(tmp_path, "from-home")
    token = find_token({"RAY_AUTH_TOKEN_PATH": str(token_file)}, home)
    assert token.value == "from-path"
    assert token.origin == f"RAY_AUTH_TOKEN_PATH={token_file}"


def test_empty_env_token_counts_as_unset(tmp_path):
    home = _home_with_token(tmp_path, "from-home\n")
    token = find_token({"RAY_AUTH_TOKEN": "  "}, home)
    assert token.value == "from-home"
    assert token.origin == str(home / ".ray" / "auth_token")


def test_no_source_gives_no_token_and_says_what_was_tried(tmp_path):
    home = _home_with_token(tmp_path, None)
    token = find_token({}, home)
    assert token.value is None
    assert token.headers() == {}
    assert "RAY_AUTH_TOKEN" in token.origin and str(home / ".ray" / "auth_token") in token.origin


def test_unreadable_or_empty_token_path_is_an_error_not_a_fallthrough(tmp_path):
    home = _home_with_token(tmp_path, "from-home")
    with pytest.raises(TokenError, match="RAY_AUTH_TOKEN_PATH=.*missing.*cannot read"):
        find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        find_token({"RAY_AUTH_TOKEN_PATH": str(empty)}, home)


def test_header_is_a_bearer_token():
    assert ClusterToken("abc", "RAY_AUTH_TOKEN").headers() == {"Authorization": "Bearer abc"}


def test_failure_lines_name_the_source_and_the_remedy():
    missing = describe_auth_failure(
        "http://h:8265", ClusterToken(None, "no RAY_AUTH_TOKEN, ..."), rejected=False
    )
    rejected = describe_auth_failure(
        "http://h:8265", ClusterToken("x", "RAY_AUTH_TOKEN"), rejected=True
    )
    for line in (missing, rejected):
        assert "\n" not in line
        assert "RAY_AUTH_TOKEN=" in line and "~/.ray/auth_token" in line
    assert "HTTP 401" in missing and "sent no token" in missing
    assert "HTTP 403" in rejected and "from RAY_AUTH_TOKEN" in rejected
