"""The refusal every check raises: an HTTP status (4xx) and a message naming the parameter or file."""

from __future__ import annotations

from fastapi import HTTPException

__all__ = ["RequestError"]


class RequestError(HTTPException):
    """A request the app refuses: ``status`` (4xx) and a message for the client (FastAPI answers it as is)."""

    def __init__(self, status: int, message: str):
        super().__init__(status_code=int(status), detail=message)
        self.status = int(status)
        self.message = message

    def __str__(self) -> str:
        return self.message
