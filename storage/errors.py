"""Storage errors: each names the URI it concerns and the cause."""

from __future__ import annotations


class StorageError(Exception):
    """A store operation failed; the message names the URI and the cause."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"{uri}: {reason}")
        self.uri = uri
        self.reason = reason


class ObjectNotFound(StorageError):
    """No object exists at the URI."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri, "no such object")


class ChecksumMismatch(StorageError):
    """The bytes read do not hash to the sha256 recorded for the object."""

    def __init__(self, uri: str, expected: str, actual: str) -> None:
        super().__init__(uri, f"sha256 mismatch: expected {expected}, read {actual}")
        self.expected = expected
        self.actual = actual


class TransientStorageError(StorageError):
    """A failure that may heal when retried (5xx, throttling, timeouts, connection resets)."""
