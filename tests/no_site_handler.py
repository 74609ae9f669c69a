"""A handler module that cannot be imported without the site hooks (as a package installed by
a `.pth` import hook would be): the fork server, which runs without them, cannot import it."""

import sys

from tests.handlers import LineEchoHandler

if sys.flags.no_site:
    raise ImportError("this module needs the site hooks")

__all__ = ["LineEchoHandler"]
