"""Errors a user can cause. Entry points print their message and exit non-zero, no traceback."""


class UserError(Exception):
    """Something the user can fix: a bad path, an unknown name, missing weights, bad data."""


class DatasetError(UserError):
    """The dataset folder is missing, malformed, or has too many unreadable files."""


class WeightsUnavailableError(UserError):
    """Pretrained weights were asked for but cannot be loaded (typically: offline, no cache)."""
