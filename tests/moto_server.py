"""A moto S3 server on loopback, shared by every test in the process.

`moto_endpoint()` starts it on first use (on a free port) and stops it at exit;
`new_bucket()` gives each test a bucket of its own, so tests never see each other's objects.
"""

from __future__ import annotations

import atexit
import socket
import uuid
from typing import Any

import boto3

REGION = "us-east-1"
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"

_endpoint: str | None = None


def free_port() -> int:
    """A loopback TCP port nothing is listening on (at the moment of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def moto_endpoint() -> str:
    """The URL of this process's moto S3 server, starting it if needed."""
    global _endpoint
    if _endpoint is None:
        from moto.server import ThreadedMotoServer

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        atexit.register(server.stop)
        _endpoint = f"http://127.0.0.1:{port}"
    return _endpoint


def s3_client() -> Any:
    """A plain boto3 client for the moto server, for setting up and checking tests."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=moto_endpoint(),
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )


def new_bucket() -> str:
    """Create an empty bucket with a unique name on the moto server and return its name.
    Blocking: call it from test setUp, not from inside the reactor's work."""
    name = f"heddle-test-{uuid.uuid4().hex[:16]}"
    s3_client().create_bucket(Bucket=name)
    return name
