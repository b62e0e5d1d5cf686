"""Which run directories a starting supervisor removes: only dead supervisors' own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fastdns.supervise import rundir


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: nobody has it (until the kernel hands it out again)


def test_a_run_directory_is_locked_and_removed_by_its_owner(tmp_path: Path) -> None:
    rd = rundir.RunDir(str(tmp_path))
    name = os.path.basename(rd.path)
    assert name.startswith(f"fastdns-{os.getpid()}-")
    assert oct(os.stat(rd.path).st_mode & 0o777) == "0o700"
    assert rundir.remove_stale(str(tmp_path)) == []  # locked, and our pid lives
    rd.remove()
    assert not os.path.exists(rd.path)
    rd.remove()  # twice is harmless


def test_only_unlocked_directories_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"fastdns-{dead_pid()}-abcdefgh"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "stats.sock").write_text("")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as other:
        try:
            # pid alive but no fastdns (pid reuse): stale as well
            reused = tmp_path / f"fastdns-{other.pid}-ijklmnop"
            reused.mkdir()
            keep = [
                tmp_path / f"fastdns-{dead_pid()}",  # not our name pattern
                tmp_path / "fastdns-0",
                tmp_path / f"fastdns-{os.getpid()}-qrstuvwx",  # this process: a fastdns?
            ]
            for path in keep:
                path.mkdir()
            link = tmp_path / f"fastdns-{dead_pid()}-symlink0"
            link.symlink_to(dead)
            removed = rundir.remove_stale(str(tmp_path))
        finally:
            other.kill()
    assert sorted(removed) == sorted([str(dead), str(reused)])
    assert not dead.exists() and not reused.exists()
    assert all(path.is_dir() for path in keep) and link.is_symlink()


def test_a_live_supervisors_directory_is_kept_even_if_its_pid_looks_dead(
    tmp_path: Path,
) -> None:
    """The lock decides: a supervisor in another pid namespace has a pid we cannot see."""
    rd = rundir.RunDir(str(tmp_path))
    disguised = tmp_path / f"fastdns-{dead_pid()}-zzzzzzzz"
    os.rename(rd.path, disguised)  # the lock follows the inode
    try:
        assert rundir.remove_stale(str(tmp_path)) == []
        assert disguised.is_dir()
    finally:
        rd.path = str(disguised)
        rd.remove()


def test_other_owners_are_left_alone(tmp_path: Path) -> None:
    dead = tmp_path / f"fastdns-{dead_pid()}-abcdefgh"
    dead.mkdir()
    assert rundir.remove_stale(str(tmp_path), owners={os.geteuid() + 1}) == []
    assert dead.is_dir()
