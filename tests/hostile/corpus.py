"""Configuration files that each once took the supervisor down, or made `check` print a
traceback or an unbounded line (issue #13). Each is the body of a whole file; `{probe}` is a
server that must keep serving through a rejected reload (see tests/integration/test_hostile.py).

Every entry must be refused by `check` (78) and by a reload (the old configuration keeps
serving): a value that cannot be served is a configuration error, whatever stage would meet it.
"""

PROBE = """
[servers.probe]
address = "tcp://127.0.0.1:0"
handler = "tests.handlers:LineEchoHandler"
mode = "inline"
"""


def _server(extra: str, address: str = "tcp://127.0.0.1:0", name: str = "extra") -> str:
    return f"""
[servers.{name}]
address = "{address}"
handler = "tests.handlers:LineEchoHandler"
{extra}
"""


HUGE_DECIMAL = "9" * 5000
HUGE_HEX = "0x" + "f" * 4000

# name -> (file text, what the one-line error must mention)
CORPUS: dict[str, tuple[str, str]] = {
    "5000-digit integer": (PROBE + _server(f"max_children = {HUGE_DECIMAL}"), "TOML"),
    "array nested 1000 deep": (PROBE + "x = " + "[" * 1000 + "]" * 1000 + "\n", "nested"),
    "table nested 1000 deep": (PROBE + "y = " + "{a = " * 1000 + "1" + "}" * 1000, "nested"),
    "NUL in supervisor.user": ('[supervisor]\nuser = "no\\u0000body"\n' + PROBE, "NUL"),
    "NUL in a server's user": (PROBE + _server('user = "no\\u0000body"'), "NUL"),
    "NUL in a unix path": (PROBE + _server("", "unix:///tmp/sv\\u0000x.sock"), "NUL"),
    "NUL in an allow entry": (PROBE + _server('allow = ["user:ro\\u0000ot"]'), "NUL"),
    "NUL in socket_owner": (
        PROBE + _server('socket_owner = "ro\\u0000ot"', "unix:///tmp/sv-nul.sock"),
        "NUL",
    ),
    "NUL in the pidfile": ('[supervisor]\npidfile = "/tmp/a\\u0000b.pid"\n' + PROBE, "NUL"),
    "NUL in the log file": ('[supervisor]\nlog_file = "/tmp/a\\u0000b.log"\n' + PROBE, "NUL"),
    "NUL in a path entry": ('[supervisor]\npath = ["/tmp/\\u0000"]\n' + PROBE, "NUL"),
    "rate_burst of 3000 hex digits": (
        PROBE + _server("rate = 1\nrate_burst = 0x" + "f" * 3000),
        "rate_burst",
    ),
    "max_children of 4000 hex digits": (PROBE + _server(f"max_children = {HUGE_HEX}"), "bits"),
    "max_per_source of 4000 hex digits": (
        PROBE + _server(f"max_per_source = {HUGE_HEX}"),
        "bits",
    ),
    "global max_children of 4000 hex digits": (
        f"[supervisor]\nmax_children = {HUGE_HEX}\n" + PROBE,
        "bits",
    ),
    "nice of 4000 hex digits": (PROBE + _server(f'mode = "fork"\nnice = {HUGE_HEX}'), "bits"),
    "socket_mode of 4000 hex digits": (
        PROBE + _server(f"socket_mode = {HUGE_HEX}", "unix:///tmp/sv-mode.sock"),
        "bits",
    ),
    "user id of 4000 hex digits": (PROBE + _server(f"user = {HUGE_HEX}"), "bits"),
    "uid: rule of 5000 digits": (
        PROBE + _server(f'allow = ["uid:{HUGE_DECIMAL}"]', "unix:///tmp/sv-uid.sock"),
        "uid",
    ),
    "shutdown_timeout of 4000 hex digits": (
        f"[supervisor]\nshutdown_timeout = {HUGE_HEX}\n" + PROBE,
        "bits",
    ),
    "rlimit_as at its old maximum": (PROBE + _server("rlimit_as = 17592186044416"), "rlimit_as"),
    "rlimit_cpu of 2**70": (PROBE + _server("rlimit_cpu = 1180591620717411303424"), "rlimit_cpu"),
    "max_requests of 4000 hex digits": (
        PROBE + _server(f'mode = "prefork"\nworkers = 1\nmax_requests = {HUGE_HEX}'),
        "bits",
    ),
    "log_file is the pidfile": (
        '[supervisor]\npidfile = "run/x.pid"\nlog_file = "run/x.pid"\n' + PROBE,
        "also supervisor.pidfile",
    ),
    "pidfile is this file": ('[supervisor]\npidfile = "supervisor.toml"\n' + PROBE, "this"),
    "a server name ending in a newline": (PROBE + _server("", name='"echo\\n"'), "name"),
    "a value of a megabyte": (PROBE + _server(f'mode = "{"x" * 2**20}"'), "mode"),
    "a key of a megabyte": (PROBE + _server(f"{'k' * 2**20} = 1"), "unknown key"),
    "handler raising KeyboardInterrupt": (
        PROBE + _server("").replace("tests.handlers:", "tests.hostile.keyboard_interrupt:"),
        "KeyboardInterrupt",
    ),
    "handler raising a BaseException": (
        PROBE + _server("").replace("tests.handlers:", "tests.hostile.base_exception:"),
        "Odd",
    ),
    "handler raising an unprintable exception": (
        PROBE + _server("").replace("tests.handlers:", "tests.hostile.unprintable:"),
        "Unprintable",
    ),
    "handler raising a 2 MB error": (
        PROBE + _server("").replace("tests.handlers:", "tests.hostile.huge_error:"),
        "ImportError",
    ),
    "handler calling sys.exit()": (
        PROBE + _server("").replace("tests.handlers:", "tests.hostile.system_exit:"),
        "SystemExit",
    ),
}
