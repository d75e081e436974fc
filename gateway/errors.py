"""OpenAI's error object: `{"error": {"message", "type", "param", "code"}}` with the HTTP status."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ApiError(Exception):
    message: str
    param: str | None = None
    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None
    headers: dict[str, str] | None = None  # e.g. Retry-After on a 503, which the openai SDKs honour

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def unsupported(param: str, what: str) -> ApiError:
    """A feature the OpenAI API has and this server does not: refused by name, never ignored."""
    return ApiError(f"{param} is not supported by this server: {what}", param, code="unsupported_parameter")
