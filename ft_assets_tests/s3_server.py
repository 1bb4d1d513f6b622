"""A real S3 endpoint for tests: moto's server in a thread on 127.0.0.1, reached over HTTP like any store."""

from __future__ import annotations

import contextlib
import os
import urllib.request
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Starts the server, points the AWS_* variables at it for the session and yields its URL.

    Code under test gets the endpoint and the fake credentials only from the environment, as in
    production. A developer's profile, session token, S3-specific endpoint and ~/.aws files are
    hidden, so no test can reach a real account.
    """
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free one
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "moto-test-key")
        env.setenv("AWS_SECRET_ACCESS_KEY", "moto-test-secret")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", url)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credential lookup waits on a timeout
        # An S3FileSystem made before or during the session keeps the endpoint it was made with.
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield url
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


@contextlib.contextmanager
def auth_enforced(endpoint: str) -> Iterator[None]:
    """Makes the server check credentials, which moto skips by default: unknown keys get a 403."""
    def set_free_requests(count: str) -> None:
        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(),
                                         method="POST", headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request).close()

    set_free_requests("0")
    try:
        yield
    finally:
        set_free_requests("inf")
