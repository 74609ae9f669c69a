"""TOML configuration text for the tests, so that a test shows only what is special about it.

`server_table("echo", "LineEchoHandler", mode="thread", max_children=8)` is

    [servers.echo]
    address = "tcp://127.0.0.1:0"
    handler = "tests.handlers:LineEchoHandler"
    mode = "thread"
    max_children = 8

A handler given by its class name alone is one of tests/handlers.py; a "module:Class" spec is
written as given. Keyword arguments become keys, in the order given, their values written as
TOML (strings, integers, floats, booleans and lists of them); a server name goes into the
header as given (quote an odd one yourself: '"echo.v2"'). Every table starts and ends with a
newline, so tables (and raw TOML lines, which then belong to the table before them) can be
joined with `+`. A test whose subject is odd or broken TOML, or the way a value is spelled
(0o660 against "0660"), writes that text out itself.
"""

import json
from collections.abc import Mapping, Sequence

TomlValue = str | int | float | bool | Sequence["TomlValue"]

ANY_PORT = "tcp://127.0.0.1:0"  # loopback, a port the kernel picks
HANDLERS = "tests.handlers"  # the module of a handler given by its class name alone


def toml_value(value: TomlValue) -> str:
    """`value` as a TOML value (a JSON string is a TOML basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    return "[" + ", ".join(toml_value(item) for item in value) + "]"


def table(header: str, keys: Mapping[str, TomlValue]) -> str:
    """A `[header]` table with `keys`, in their order."""
    lines = [f"[{header}]", *(f"{key} = {toml_value(value)}" for key, value in keys.items())]
    return "\n" + "\n".join(lines) + "\n"


def handler_spec(handler: str) -> str:
    """A handler spec: a class name alone is a class of tests/handlers.py."""
    return handler if ":" in handler else f"{HANDLERS}:{handler}"


def server_table(name: str, handler: str, **keys: TomlValue) -> str:
    """The `[servers.NAME]` table of one server: its address (ANY_PORT unless `keys` has one),
    its handler, then the other `keys`."""
    address = keys.pop("address", ANY_PORT)
    return table(f"servers.{name}", {"address": address, "handler": handler_spec(handler), **keys})


def supervisor_table(**keys: TomlValue) -> str:
    """The `[supervisor]` table: the settings of the whole process."""
    return table("supervisor", keys)


def metrics_table(**keys: TomlValue) -> str:
    """The `[metrics]` table: the metrics and health endpoint."""
    return table("metrics", keys)


# Tables the command-line suites share.
ECHO = server_table("echo", "BaseEchoHandler")
FAILING = server_table("failing", "FailingHandler")
METRICS_ANY_PORT = metrics_table(address=ANY_PORT)  # tests may run beside a real supervisor


def hosted_table(name: str, factory: str, **keys: TomlValue) -> str:
    """The `[servers.NAME]` table of a hosted server: `server = factory` instead of a handler
    (a name alone is a function of tests/hooked.py)."""
    address = keys.pop("address", ANY_PORT)
    spec = factory if ":" in factory else f"tests.hooked:{factory}"
    return table(f"servers.{name}", {"address": address, "server": spec, **keys})
