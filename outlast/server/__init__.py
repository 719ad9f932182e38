"""The HTTP server: API (and dashboard) over the store."""

from .app import create_app

__all__ = ["create_app"]
