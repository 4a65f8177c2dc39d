"""Errors of `dagpg render` and of reading Servy service files."""

from __future__ import annotations

from dagpg.errors import ConfigurationError


class RenderError(ConfigurationError):
    """The settings cannot be rendered into deployment files; nothing was written."""


class ServyConfigError(ConfigurationError):
    """A Servy service file (XML or JSON, as `servy-cli export` writes it) cannot be read."""
