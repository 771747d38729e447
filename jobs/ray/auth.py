"""Ray token authentication for the Jobs API, found where Ray's own clients look for it.

Ray (2.52+) reads the cluster token from, in order: the `RAY_AUTH_TOKEN` variable, the file
named by `RAY_AUTH_TOKEN_PATH`, then `~/.ray/auth_token`. Ray's job SDK only attaches it when
`RAY_AUTH_MODE=token` is set in the *client's* environment, which users submitting to a
remote head rarely set; so facetrain finds the token itself and always sends it when there is
one. A head with authentication disabled ignores the header, so nothing changes there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path(".ray") / "auth_token"

HOW_TO_PROVIDE = (
    f"set {TOKEN_ENV}=<token> (on the head, `ray get-auth-token` prints it), "
    f"point {TOKEN_PATH_ENV} at a file holding it, or save it to ~/.ray/auth_token"
)


class TokenError(ValueError):
    """A token source that is configured but unusable; the message names it."""


@dataclass(frozen=True)
class ClusterToken:
    """The token to send (None: none found) and where it came from, for messages."""

    value: str | None
    origin: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"} if self.value else {}


def find_token(environ: Mapping[str, str] | None = None, home: Path | None = None) -> ClusterToken:
    """The cluster token by Ray's precedence: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token.

    An empty `RAY_AUTH_TOKEN` counts as unset (as in Ray). A `RAY_AUTH_TOKEN_PATH` that cannot
    be read or is empty is an error rather than a silent fall-through, again as in Ray: the user
    asked for that file.
    """
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    env_token = environ.get(TOKEN_ENV, "").strip()
    if env_token:
        return ClusterToken(env_token, TOKEN_ENV)
    token_path = environ.get(TOKEN_PATH_ENV, "").strip()
    if token_path:
        origin = f"{TOKEN_PATH_ENV}={token_path}"
        try:
            text = Path(token_path).expanduser().read_text().strip()
        except OSError as err:
            raise TokenError(f"{origin}: cannot read the token file ({err.strerror})") from err
        if not text:
            raise TokenError(f"{origin}: the token file is empty")
        return ClusterToken(text, origin)
    default_file = home / DEFAULT_TOKEN_FILE
    try:
        text = default_file.read_text().strip()
    except FileNotFoundError:
        text = ""
    except OSError as err:
        raise TokenError(f"{default_file}: cannot read the token file ({err.strerror})") from err
    if text:
        return ClusterToken(text, str(default_file))
    return ClusterToken(None, f"no {TOKEN_ENV}, no {TOKEN_PATH_ENV}, no {default_file}")


def describe_auth_failure(address: str, token: ClusterToken, rejected: bool) -> str:
    """One line for a 401/403 from the head: what was tried and how to provide a token.

    `rejected` is True when the head refused the token that was sent (403), False when it
    asked for one (401).
    """
    if token.value is None:
        tried = f"sent no token ({token.origin})"
    else:
        tried = f"sent the token from {token.origin}"
    if rejected:
        problem = f"Ray head {address} rejected the token (HTTP 403): {tried}"
    else:
        problem = f"Ray head {address} requires a token (HTTP 401): {tried}"
    return f"{problem}; {HOW_TO_PROVIDE}"
