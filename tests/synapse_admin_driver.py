"""Runs calls of matrix-synapse-admin (the `synapse_admin` package) for
tests/test_admin_synapse_admin_lib.py, in the library's own virtualenv, never Heddle's.

Reads one JSON object on stdin: `base_url` (where the server listens), `server_name`,
`token` (an admin's) and `calls`, each `[class, method, args, kwargs]` (class `User`,
`Room`, `Media` or `Management`); prints one JSON array, an outcome per call:
`{"result": ...}` or `{"errcode": ..., "error": ...}` (the library raises
`SynapseException` for an error answer) or `{"exception": ...}` for anything else.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import synapse_admin
from synapse_admin.base import SynapseException


def jsonable(value: Any) -> Any:
    """The library's answers (lists with a total, named tuples) as plain JSON values."""
    if hasattr(value, "_asdict"):
        return jsonable(value._asdict())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def main() -> None:
    job = json.load(sys.stdin)
    clients: dict[str, Any] = {}
    outcomes: list[dict[str, Any]] = []
    for class_name, method, args, kwargs in job["calls"]:
        if class_name not in clients:
            # The library builds IDs and URLs from one `server_addr`: the server name.
            # Connections then go to where the test server really listens.
            client = getattr(synapse_admin, class_name)(
                server_addr=job["server_name"],
                access_token=job["token"],
                server_protocol="http",
            )
            client.connection.base_url = job["base_url"]
            clients[class_name] = client
        try:
            # Some calls print warnings for a human: stdout carries only the answer.
            with contextlib.redirect_stdout(sys.stderr):
                result = getattr(clients[class_name], method)(*args, **kwargs)
            outcomes.append({"result": jsonable(result)})
        except SynapseException as e:
            outcomes.append({"errcode": e.code, "error": e.msg})
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            outcomes.append({"exception": f"{type(e).__name__}: {e}"})
    json.dump(outcomes, sys.stdout)


if __name__ == "__main__":
    main()
