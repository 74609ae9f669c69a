"""supervisor: a super-server that hosts many socketserver servers in one process."""

__version__ = "0.1.0"
