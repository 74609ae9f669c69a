"""paths.walk: a path name by name, as the kernel resolves it."""

import errno
from pathlib import Path

import pytest

from supervisor.paths import walk


def test_each_name_on_the_way_links_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("")
    (tmp_path / "link").symlink_to("real")
    steps = list(walk(str(tmp_path / "link" / ".." / "link" / "f")))
    names = [(step.directory, step.name, step.is_link) for step in steps[-5:]]
    # `..` after a link is taken from where the link led (tmp_path/real), as the kernel does.
    assert names == [
        (str(tmp_path), "link", True),
        (str(tmp_path), "real", False),
        (str(tmp_path), "link", True),
        (str(tmp_path), "real", False),
        (str(tmp_path / "real"), "f", False),
    ]
    assert steps[-1].path == str(tmp_path / "real" / "f")


def test_a_missing_name_ends_the_walk_with_the_rest(tmp_path: Path) -> None:
    *_, last = walk(str(tmp_path / "gone" / "a" / "b"))
    assert (last.directory, last.name, last.info, last.rest) == (
        str(tmp_path),
        "gone",
        None,
        ("a", "b"),
    )


def test_a_loop_of_links_is_eloop(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError, match="too many levels") as raised:
        list(walk(str(tmp_path / "a")))
    assert raised.value.errno == errno.ELOOP
