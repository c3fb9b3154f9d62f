"""Request bodies validated against pydantic models before any handler runs."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from homeserver.errors import Codes, MatrixError

M = TypeVar("M", bound=BaseModel)


class RequestBody(BaseModel):
    # Strict: "true" is not a boolean and 1 is not a string. Unknown keys are allowed, as
    # clients send extension fields the spec lets servers ignore.
    model_config = ConfigDict(strict=True, extra="allow")


def parse_body(body: dict[str, Any], model: type[M]) -> M:
    """Validate `body`, or 400 M_BAD_JSON naming the first offending field."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "missing":
            message = f"Missing required field '{field}'"
        else:
            message = f"Invalid value for '{field}': {first['msg']}"
        raise MatrixError(400, Codes.BAD_JSON, message) from None
