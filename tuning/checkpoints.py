"""Experiments saved before the Tune callbacks moved to `tuning.callbacks` name this module."""

from tuning.callbacks import DropOptimizerState  # noqa: F401
