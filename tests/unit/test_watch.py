"""watch.py's pure parts: which directories and names a configuration path goes through, and
the inotify binding."""

from pathlib import Path

import pytest

from supervisor import watch as watch_module
from supervisor.config import content_digest
from supervisor.loop import Loop
from supervisor.paths import MAX_LINKS
from supervisor.watch import IN_CLOSE_WRITE, IN_CREATE, ConfigWatch, Inotify, places


def test_a_plain_file_is_watched_in_its_directory(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("")
    assert places(str(tmp_path / "a.toml")) == {str(tmp_path): {"a.toml"}}


def test_a_configmap_mount_is_watched_where_its_links_are(tmp_path: Path) -> None:
    version = tmp_path / "..2026_12_06"
    version.mkdir()
    (version / "s.toml").write_text("")
    (tmp_path / "..data").symlink_to(version.name)
    (tmp_path / "s.toml").symlink_to("..data/s.toml")
    # The mount, where `..data` is swapped, and the version directory the file is in.
    assert places(str(tmp_path / "s.toml")) == {
        str(tmp_path): {"s.toml", "..data"},
        str(version): {"s.toml"},
    }


def test_a_directory_link_on_the_way_is_watched_in_its_parent(tmp_path: Path) -> None:
    """The release layout: `-c /srv/app/current/conf.toml`, `current -> releases/1`."""
    release = tmp_path / "releases" / "1"
    release.mkdir(parents=True)
    (release / "conf.toml").write_text("")
    (tmp_path / "current").symlink_to("releases/1")
    assert places(str(tmp_path / "current" / "conf.toml")) == {
        str(tmp_path): {"current"},
        str(release): {"conf.toml"},
    }


def test_a_link_into_another_directory_watches_both(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "real.toml").write_text("")
    (tmp_path / "etc" / "s.toml").symlink_to(tmp_path / "srv" / "real.toml")
    assert places(str(tmp_path / "etc" / "s.toml")) == {
        str(tmp_path / "etc"): {"s.toml"},
        str(tmp_path / "srv"): {"real.toml"},
    }


def test_a_missing_directory_is_watched_for_in_its_parent(tmp_path: Path) -> None:
    assert places(str(tmp_path / "gone" / "s.toml")) == {str(tmp_path): {"gone"}}


def test_a_loop_of_links_ends(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    found = places(str(tmp_path / "a"))
    assert found == {str(tmp_path): {"a", "b"}}
    assert MAX_LINKS < 100


def test_inotify_reads_the_events_queued(tmp_path: Path) -> None:
    inotify = Inotify()
    try:
        wd = inotify.add_watch(str(tmp_path), IN_CLOSE_WRITE | IN_CREATE)
        assert inotify.read() == []  # nothing yet, and no blocking
        (tmp_path / "x").write_text("1")
        assert inotify.read() == [(wd, IN_CREATE, "x"), (wd, IN_CLOSE_WRITE, "x")]
    finally:
        inotify.close()


def test_only_the_names_that_matter_arm_the_watch(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("a")
    loop = Loop()
    watch = ConfigWatch(loop, str(path), content_digest(b"a"), lambda: True)
    try:
        watch.start()
        (tmp_path / "pidfile").write_text("1")  # another name in the directory
        watch._on_events()
        assert not watch.pending
        path.write_text("b")
        watch._on_events()
        assert watch.pending
    finally:
        watch.close()
        loop.close()


def test_a_refused_reload_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "DEBOUNCE", 0.0)
    path = tmp_path / "s.toml"
    path.write_text("b")
    answers = [False, True]  # refused (busy), then tried (and rejected: not reloaded())
    loop = Loop()
    watch = ConfigWatch(loop, str(path), content_digest(b"a"), lambda: answers.pop(0))
    try:
        watch.start()  # (the file is not what was loaded: looked at soon)
        assert watch.pending
        watch._settled()
        assert watch.pending, "a refused reload is to be tried again"
        watch._settled()
        assert not watch.pending
        assert answers == []
        watch._catch_up()
        assert not watch.pending, "a rejected content is not tried again"
    finally:
        watch.close()
        loop.close()
