"""Talk to a Ray head's Jobs API: submit, follow logs, status, stop, with usable errors.

Wraps `ray.job_submission.JobSubmissionClient`: sends the cluster token found by
`jobs.submission.auth`, and turns authentication and connection failures into one line.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from facetrain.jobs.ray.auth import ClusterToken, describe_auth_failure, find_token

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
# Exit codes of `facetrain submit` for a job that ended without its own driver exit code.
EXIT_FAILED = 1
EXIT_STOPPED = 3


class HeadError(RuntimeError):
    """The head could not be reached or refused a request; the message is one line."""


class AuthFailure(HeadError):
    """The head refused the request for want of a (valid) token."""


def default_address() -> str:
    """`RAY_API_SERVER_ADDRESS`, else an http(s) `RAY_ADDRESS`, else the local dashboard."""
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


class Head:
    """One Ray head's Jobs API, authenticated with the token Ray's clients would find."""

    def __init__(self, address: str, token: ClusterToken | None = None) -> None:
        self.address = address.rstrip("/")
        self.token = find_token() if token is None else token
        with self.errors():
            from ray.job_submission import JobSubmissionClient

            self.client = JobSubmissionClient(self.address, headers=self.token.headers())

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn the SDK's authentication and connection errors into HeadError (one line)."""
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as err:
            # The SDK words a 403 "Authentication failed", a 401 "Authentication required".
            rejected = str(err).startswith("Authentication failed")
            raise AuthFailure(describe_auth_failure(self.address, self.token, rejected)) from err
        except ConnectionError as err:
            raise HeadError(
                f"Ray head {self.address}: cannot connect to its dashboard (is the head running "
                "and --address its dashboard URL, default port 8265?)"
            ) from err
        except RuntimeError as err:
            if isinstance(err, HeadError):
                raise
            # e.g. "Request failed with status code 404: Job ... does not exist."
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise HeadError(f"Ray head {self.address}: {first_line}") from err

    def submit(
        self, entrypoint: str, runtime_env: dict[str, Any], job_id: str | None = None
    ) -> str:
        with self.errors():
            return self.client.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                submission_id=job_id,
                metadata={"submitted_by": "facetrain"},
            )

    def status(self, job_id: str) -> str:
        with self.errors():
            return str(self.client.get_job_status(job_id).value)

    def info(self, job_id: str) -> Any:
        with self.errors():
            return self.client.get_job_info(job_id)

    def logs(self, job_id: str) -> str:
        with self.errors():
            return self.client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        with self.errors():
            return bool(self.client.stop_job(job_id))

    def follow(self, job_id: str, out: IO[str] | None = None) -> None:
        """Print the job's logs as they come until it ends (the head closes the stream)."""
        out = out or sys.stdout

        async def pump() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                out.write(chunk)
                out.flush()

        with self.errors():
            asyncio.run(pump())

    def wait(self, job_id: str, poll_s: float = 1.0) -> str:
        """Block until the job is in a terminal state (the log stream can end before it is)."""
        import time

        while (state := self.status(job_id)) not in TERMINAL_STATES:
            time.sleep(poll_s)
        return state

    def exit_code(self, job_id: str) -> int:
        """0 for SUCCEEDED; the driver's own exit code for FAILED when known; 3 for STOPPED."""
        info = self.info(job_id)
        state = str(info.status.value)
        if state == "SUCCEEDED":
            return 0
        if state == "STOPPED":
            return EXIT_STOPPED
        driver_code = getattr(info, "driver_exit_code", None)
        return driver_code if isinstance(driver_code, int) and driver_code > 0 else EXIT_FAILED
