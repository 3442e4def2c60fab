"""User-facing errors.

Every problem the user can fix (bad file, missing split, foreign checkpoint, bad
parameter) is raised as :class:`SbirError` with a message naming the thing and
the fix. The CLI prints these without a traceback; anything else is a bug.
"""

from __future__ import annotations


class SbirError(Exception):
    """An error caused by user input; the message says what and how to fix it."""


class DataError(SbirError):
    """A dataset, folder or image cannot be used."""


class ImageLoadError(DataError):
    """One image file cannot be decoded. ``path`` names it."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"cannot read image {self.path}: {reason}. Replace or delete the file (or re-export it as PNG/JPEG)."
        )


class CheckpointError(SbirError):
    """A checkpoint or run folder is missing, corrupt or not made by sbir."""


class ConfigError(SbirError):
    """A configuration value is invalid."""
