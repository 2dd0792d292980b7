"""What the control plane refuses, as AWS names it."""

from __future__ import annotations


class ApiError(Exception):
    """An AWS error response: ``code`` is the error type botocore reports
    (``ResourceNotFoundException``, ...), ``status`` the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
