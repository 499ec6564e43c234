"""Errors a user can cause. Entry points print their message and exit non-zero, no traceback."""


class UserError(Exception):
    """Something the user can fix: a bad path, an unknown name, missing weights, bad data."""


class DatasetError(UserError):
    """The dataset folder is missing, malformed, or has too many unreadable files."""


class WeightsUnavailableError(UserError):
    """Pretrained weights were asked for but cannot be loaded (typically: offline, no cache)."""


class TrainingDiverged(UserError):
    """The loss or the model's outputs stopped being finite: the run has no score. A search
    records the trial as failed and goes on."""
