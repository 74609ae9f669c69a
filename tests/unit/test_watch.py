"""watch.py's pure parts: which directories a configuration path goes through."""

import os
from pathlib import Path

from supervisor.watch import MAX_LINKS, Inotify, directories


def test_a_plain_file_is_watched_in_its_directory(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("")
    assert set(directories(str(tmp_path / "a.toml"))) == {str(tmp_path)}


def test_a_configmap_mount_is_watched_where_its_links_are(tmp_path: Path) -> None:
    version = tmp_path / "..2026_12_06"
    version.mkdir()
    (version / "s.toml").write_text("")
    (tmp_path / "..data").symlink_to(version.name)
    (tmp_path / "s.toml").symlink_to("..data/s.toml")
    found = set(directories(str(tmp_path / "s.toml")))
    # The mount (where `..data` is swapped) and the version directory the file is in.
    assert str(tmp_path) in found
    assert str(version) in {os.path.realpath(directory) for directory in found}


def test_a_link_into_another_directory_watches_both(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "real.toml").write_text("")
    (tmp_path / "etc" / "s.toml").symlink_to(tmp_path / "srv" / "real.toml")
    found = set(directories(str(tmp_path / "etc" / "s.toml")))
    assert found == {str(tmp_path / "etc"), str(tmp_path / "srv")}


def test_a_loop_of_links_ends(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    found = list(directories(str(tmp_path / "a")))
    assert len(found) <= MAX_LINKS + 1
    assert set(found) == {str(tmp_path)}


def test_inotify_counts_the_events_queued(tmp_path: Path) -> None:
    inotify = Inotify()
    try:
        inotify.add_watch(str(tmp_path), 0x8 | 0x100)  # CLOSE_WRITE, CREATE
        assert inotify.read() == 0  # nothing yet, and no blocking
        (tmp_path / "x").write_text("1")  # CREATE, CLOSE_WRITE
        assert inotify.read() == 2
    finally:
        inotify.close()
