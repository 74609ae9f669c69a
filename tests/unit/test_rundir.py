"""rundir: who may change the directory of the pidfile and the control socket (root only:
the tests give directories to user nobody, as an attacker's would be)."""

import os
from pathlib import Path

import pytest

from supervisor import rundir
from supervisor.rundir import UnsafeDirectory

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to give files away)")

NOBODY = 65534
ROOT_ONLY = frozenset({0})


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A directory whose parents are all root's and closed to others (tmp_path's are)."""
    tmp_path.chmod(0o755)
    return tmp_path


def test_a_directory_of_roots_is_trusted_and_its_real_path_returned(base: Path) -> None:
    real = base / "real"
    real.mkdir(mode=0o755)
    (base / "link").symlink_to(real)
    assert rundir.check(str(base / "link"), ROOT_ONLY).path == str(real)


@pytest.mark.parametrize(
    ("mode", "owner", "reason"),
    [
        (0o777, 0, "writable by other users (mode 0777)"),
        (0o775, 0, "writable by other users (mode 0775)"),  # (group nobody)
        (0o755, NOBODY, "belongs to nobody (uid 65534), not to root or the supervisor's user"),
    ],
    ids=["world-writable", "group-writable-not-root", "someone-elses"],
)
def test_a_directory_others_can_change_is_refused(
    base: Path, mode: int, owner: int, reason: str
) -> None:
    directory = base / "run"
    directory.mkdir()
    os.chown(directory, owner, NOBODY)
    directory.chmod(mode)
    with pytest.raises(UnsafeDirectory) as caught:
        rundir.check(str(directory), ROOT_ONLY, delegate=False)
    assert str(caught.value) == f"{directory}: {reason}"
    assert caught.value.exit_status == os.EX_NOPERM


def test_root_group_may_write_it(base: Path) -> None:
    """OpenShift runs an image as an arbitrary uid in group 0: a root:0 0775 directory."""
    directory = base / "run"
    directory.mkdir()
    directory.chmod(0o775)
    assert rundir.check(str(directory), ROOT_ONLY).path == str(directory)


def test_a_parent_others_can_change_is_refused(base: Path) -> None:
    parent = base / "shared"
    parent.mkdir()
    parent.chmod(0o777)
    (parent / "run").mkdir(mode=0o755)
    with pytest.raises(UnsafeDirectory, match=r"shared is writable by other users$"):
        rundir.check(str(parent / "run"), ROOT_ONLY)
    os.chown(parent, NOBODY, NOBODY)
    parent.chmod(0o755)
    with pytest.raises(UnsafeDirectory, match=r"shared belongs to nobody \(uid 65534\), who"):
        rundir.check(str(parent / "run"), ROOT_ONLY)


def test_a_sticky_parent_is_fine_for_a_trusted_owner_only(base: Path) -> None:
    """/tmp: others cannot rename what is root's, but could have made the directory first."""
    parent = base / "tmp"
    parent.mkdir()
    parent.chmod(0o1777)
    ours, theirs = parent / "ours", parent / "theirs"
    ours.mkdir(mode=0o755)
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    assert rundir.check(str(ours), ROOT_ONLY).path == str(ours)
    for delegate in (False, True):  # (not vouched for: anyone could have created it)
        with pytest.raises(UnsafeDirectory, match="belongs to nobody"):
            rundir.check(str(theirs), ROOT_ONLY, delegate=delegate)
    assert rundir.check(str(theirs), {NOBODY}).path == str(theirs)  # nobody's own supervisor


def test_root_vouches_for_a_directory_it_gave_away(base: Path) -> None:
    """systemd's RuntimeDirectory=: /run/supervisor made by root for the service's user. A
    control command run by root trusts that user's instance there."""
    directory = base / "run"
    directory.mkdir(mode=0o755)
    os.chown(directory, NOBODY, NOBODY)
    assert rundir.check(str(directory), ROOT_ONLY).path == str(directory)
    with pytest.raises(UnsafeDirectory):
        rundir.check(str(directory), ROOT_ONLY, delegate=False)


def test_prepare_creates_a_missing_directory_only_where_it_is_safe(base: Path) -> None:
    made = rundir.prepare(str(base / "a" / "b"), ROOT_ONLY)
    assert made == str(base / "a" / "b")
    open_parent = base / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    with pytest.raises(UnsafeDirectory, match="open is writable by other users"):
        rundir.prepare(str(open_parent / "run"), ROOT_ONLY)
    assert not (open_parent / "run").exists()
    assert rundir.prepare(str(base / "c"), ROOT_ONLY, create=False) == str(base / "c")
    assert not (base / "c").exists()


def test_a_symlink_on_the_way_must_be_a_trusted_users_that_nobody_else_can_replace(
    base: Path,
) -> None:
    """The attack: in /tmp, user nobody links the expected directory name to a directory of
    theirs, which passes every check once resolved."""
    shared = base / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    home = base / "home"
    home.mkdir(mode=0o755)
    os.chown(home, NOBODY, NOBODY)
    (home / "d").mkdir(mode=0o755)
    os.chown(home / "d", NOBODY, NOBODY)
    link = shared / "supervisor-example"
    link.symlink_to(home / "d")
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectory) as caught:
        rundir.check(str(link), ROOT_ONLY)
    assert str(caught.value) == (
        f"the symlink {link} could be pointed elsewhere by nobody (uid 65534)"
    )
    os.lchown(link, 0, 0)  # root's link, in a sticky directory: nobody can replace it
    with pytest.raises(UnsafeDirectory, match="belongs to nobody"):  # (a home is no gift)
        rundir.check(str(link), ROOT_ONLY)
    open_dir = base / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    (open_dir / "link").symlink_to(base)
    with pytest.raises(UnsafeDirectory, match="could be pointed elsewhere by other users"):
        rundir.check(str(open_dir / "link"), ROOT_ONLY)


def test_prepare_makes_every_missing_directory_0755_whatever_the_umask(base: Path) -> None:
    umask = os.umask(0)
    try:
        rundir.prepare(str(base / "a" / "b"), ROOT_ONLY)
    finally:
        os.umask(umask)
    assert (base / "a").stat().st_mode & 0o777 == 0o755
    assert (base / "a" / "b").stat().st_mode & 0o777 == 0o755
