"""A handler module whose import raises KeyboardInterrupt."""

raise KeyboardInterrupt
