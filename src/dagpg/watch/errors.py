"""Errors of `dagpg watch`."""

from __future__ import annotations

from dagpg.errors import ConfigurationError


class WatchConfigurationError(ConfigurationError):
    """The keeper cannot start as configured; it did nothing."""
