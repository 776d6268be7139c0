"""Pytest fixtures for an S3 endpoint: a moto server on 127.0.0.1 (as in s3fs's own test-suite).

Register as a plugin (``pytest_plugins = ["tests.s3_fixtures"]`` in ``tests/conftest.py``) or import the
fixtures into a test module. Fixtures:

- ``s3_server`` (session): starts ``moto.server.ThreadedMotoServer`` on a free port, points the standard AWS
  variables at it (fake credentials, ``AWS_ENDPOINT_URL``; any other ``AWS_*`` variable is cleared, and the
  shared config/credentials files are disabled) and yields the endpoint URL.
- ``s3_client`` (session): a boto3 S3 client for that endpoint, for arranging test data behind the code's back.
- ``s3_bucket`` (function): a fresh, empty bucket; yields ``"s3://<name>"``; emptied and deleted afterwards.
- ``s3_env`` (function): re-asserts the session's AWS variables for one test (use it with ``monkeypatch`` when
  a test changes them) and clears the storage module's cached clients before and after.
- ``free_port()``: a TCP port on 127.0.0.1 that nothing listens on (for "unreachable endpoint" tests).
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

FAKE_KEY = "testing-key-id"
FAKE_SECRET = "testing-secret-key"
REGION = "us-east-1"


def free_port() -> int:
    """A port on 127.0.0.1 that is free right now (bound then released; nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def aws_env(endpoint: str) -> dict[str, str]:
    """The AWS variables the fixtures set for ``endpoint``."""
    return {
        "AWS_ACCESS_KEY_ID": FAKE_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def apply_aws_env(mp: pytest.MonkeyPatch, endpoint: str) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            mp.delenv(name, raising=False)
    for name, value in aws_env(endpoint).items():
        mp.setenv(name, value)


class MotoServer:
    """A moto S3 server thread on 127.0.0.1 that can be stopped and started again on the same port
    (moto's state lives in the process, so objects survive a restart)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> MotoServer:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (connections are then refused)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        inner = getattr(server, "_server", None)
        if inner is not None:
            inner.server_close()


_shared: MotoServer | None = None


def shared_server() -> MotoServer:
    """The one moto server of this process (started on first use, stopped at exit), so that the fixtures
    imported into a test module and the same fixtures registered as a plugin share one endpoint."""
    global _shared
    if _shared is None:
        _shared = MotoServer().start()
        atexit.register(_shared.stop)
    return _shared


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    server = shared_server()
    mp = pytest.MonkeyPatch()
    apply_aws_env(mp, server.endpoint)
    try:
        yield server.endpoint
    finally:
        mp.undo()


@pytest.fixture(scope="session")
def s3_client(s3_server: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id=FAKE_KEY,
        aws_secret_access_key=FAKE_SECRET,
        region_name=REGION,
    )


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from framework import storage

    apply_aws_env(monkeypatch, s3_server)
    storage.clear_instances()
    yield s3_server
    storage.clear_instances()


def _empty_and_delete(client: Any, bucket: str) -> None:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_bucket(s3_client: Any) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    try:
        yield f"s3://{name}"
    finally:
        try:
            _empty_and_delete(s3_client, name)
        except Exception as e:  # a test that broke the endpoint must not hide its own failure
            logging.getLogger(__name__).warning("could not delete bucket %s: %s", name, e)
