"""A handler module whose import raises an exception that cannot be turned into text."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise KeyboardInterrupt


raise Unprintable
