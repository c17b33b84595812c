"""Errors the API answers with, in OpenAI's shape: {"error": {"message", "type", "code", "param"}}."""

from __future__ import annotations

# HTTP status -> OpenAI-style error type (what clients such as the `openai` package read)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "unavailable_error",
}


class ApiError(Exception):
    """A request the server answers with `status` and one readable message."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict | None = None,  # more fields for the error object, e.g. the token counts of a prompt too long
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict:
        error = {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"), "code": self.code, "param": self.param}
        return {"error": {**error, **self.extra}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)
