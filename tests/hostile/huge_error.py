"""A handler module whose import raises an error with a 2 MB message over many lines."""

raise ImportError("line\n" * 400_000)
