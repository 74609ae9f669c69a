"""A handler module whose import raises a BaseException that is not an Exception."""


class Odd(BaseException):
    pass


raise Odd("not an Exception")
