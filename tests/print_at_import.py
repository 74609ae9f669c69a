"""A handler module that prints when imported (a banner, a debug line): once per process that
imports it, never once per request."""

from tests.handlers import LineEchoHandler

print("printed-at-import")

__all__ = ["LineEchoHandler"]
