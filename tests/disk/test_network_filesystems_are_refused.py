"""A cache directory on a network or cluster file system is refused at open, with an
error naming the type and why, unless ``allow_network_fs=True`` (then a warning says
one producer per key holds per host only); a /dev/shm that cannot hold an entry's
shared memory is refused with what is wrong (docs/design.md, "Failure model").

No NFS can be mounted here. The classifier is checked on mountinfo text; the whole
path (StreamCache, new(), the command line) runs in a private mount namespace
(``unshare -rm``) where a fabricated mountinfo is bind-mounted over the process's own
``/proc/<pid>/mountinfo`` before it execs Python, so the library reads it as it reads
the real one: no test hook in the code. /dev/shm is checked for real, with small and
read-only tmpfs mounted over it in such a namespace.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import streamcache
from streamcache.disk.filesystem import (
    check_cache_fs,
    filesystem_of,
    mount_of,
    parse_mountinfo,
    refusal,
)

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=65536k
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 27 0:50 / /srv/nfs rw,relatime shared:7 master:2 - nfs4 filer:/export rw,vers=4.2
41 40 254:0 /local /srv/nfs/local rw - ext4 /dev/vda rw
42 27 0:51 / /mnt/my\\040share rw - cifs //srv/share rw
43 27 0:52 / /lustre rw - lustre 10.0.0.1@tcp:/fs rw
44 27 0:53 / /home/u/remote rw,nosuid - fuse.sshfs u@host:/ rw
45 27 0:54 / /mnt/win rw - 9p drvfs rw
46 27 0:55 / /cephfs rw - ceph 10.0.0.2:/ rw
47 27 8:1 / /media/usb rw - fuseblk /dev/sdb1 rw
48 27 0:56 / /srv/nfs rw - ext4 /dev/vdb rw
49 27 0:57 / /gpfs rw - gpfs gpfs0 rw
this line is not a mount
"""


def _type(path: str) -> str:
    m = mount_of(path, parse_mountinfo(MOUNTINFO))
    assert m is not None
    return m.fstype


def test_the_longest_mount_point_holding_the_path_gives_its_type() -> None:
    assert _type("/var/cache/sc") == "ext4"
    assert _type("/dev/shm") == "tmpfs"
    assert _type("/mnt/my share/sc") == "cifs"  # \040 is a space
    assert _type("/lustre/sc") == "lustre"
    assert _type("/lustrex/sc") == "ext4"  # a prefix of the name is no mount point
    assert _type("/home/u/remote/.cache") == "fuse.sshfs"
    assert _type("/media/usb/sc") == "fuseblk"
    # /srv/nfs was mounted over by an ext4 later: the later mount hides the earlier.
    assert _type("/srv/nfs/sc") == "ext4"
    assert _type("/srv/nfs/local/sc") == "ext4"


@pytest.mark.parametrize(
    "fstype",
    ["nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "ceph", "glusterfs", "fuse.sshfs", "9p"],
)
def test_network_and_cluster_types_are_refused(fstype: str) -> None:
    assert refusal(fstype) is not None


@pytest.mark.parametrize(
    "fstype", ["ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay", "fuseblk", "apfs"]
)
def test_local_types_are_not(fstype: str) -> None:
    assert refusal(fstype) is None


def test_unknown_fuse_is_refused_and_known_local_fuse_is_not() -> None:
    assert refusal("fuse.rclone") is not None
    assert refusal("fuse") is not None
    assert refusal("fuse.fuse-overlayfs") is None


def test_check_on_a_mountinfo_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO)
    with pytest.raises(streamcache.UnsupportedFilesystem) as err:
        check_cache_fs("/lustre/cache", False, str(table))
    assert isinstance(err.value, OSError)
    text = str(err.value)
    assert "lustre" in text and "/lustre/cache" in text and "allow_network_fs=True" in text
    check_cache_fs("/var/cache", False, str(table))  # local: nothing said
    with caplog.at_level(logging.WARNING, logger="streamcache"):
        check_cache_fs("/srv/nfs-elsewhere/x", False, str(table))  # ext4 (/)
        assert not caplog.records
        check_cache_fs("/cephfs/cache", True, str(table))
    assert "ceph" in caplog.text and "per key is not promised across hosts" in caplog.text


def test_this_hosts_own_table_reads(tmp_path: Path) -> None:
    if not os.path.exists("/proc/self/mountinfo"):
        pytest.skip("no /proc/self/mountinfo (not Linux)")
    m = filesystem_of(str(tmp_path))
    assert m is not None and m.fstype


# -- end to end, in a private mount namespace ------------------------------------------------

OPEN = r"""
import json, logging, sys, streamcache
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
how, path = sys.argv[1], sys.argv[2]
try:
    if how == "new":
        cache = streamcache.new(streamcache.Config(dir=path, min_occurrences=0))
    else:
        cache = streamcache.StreamCache(path, allow_network_fs=(how == "allow"), registry=None)
except streamcache.UnsupportedFilesystem as exc:
    print(json.dumps({"refused": str(exc)}))
    sys.exit(0)
def create(w):
    w.write(b"bytes")
with cache:
    import io
    r = cache.fetch("k", io.BytesIO(), create)
print(json.dumps({"written": r.written, "created": r.created}))
"""


def _namespace_or_skip(tmp_path: Path) -> str:
    unshare = shutil.which("unshare")
    if unshare is None or not os.path.exists("/proc/self/mountinfo"):
        pytest.skip("needs util-linux unshare and /proc")
    probe_file = tmp_path / "probe-mountinfo"
    probe_file.write_text("1 0 0:1 / / rw - probefs none rw\n")
    probe = f'mount --bind "{probe_file}" /proc/$$/mountinfo && exec cat /proc/self/mountinfo'
    ok = subprocess.run([unshare, "-rm", "sh", "-c", probe], capture_output=True, timeout=30)
    if ok.returncode != 0 or b"probefs" not in ok.stdout:
        pytest.skip(f"cannot bind-mount over /proc/<pid>/mountinfo here: {ok.stderr!r}")
    return unshare


def _in_namespace(
    unshare: str, setup: str, argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (exec'd by the shell, so it keeps the pid whose mountinfo ``setup``
    replaced) in a private mount namespace after the shell commands ``setup``."""
    script = f'{setup} && exec "$@"'
    return subprocess.run(
        [unshare, "-rm", "sh", "-c", script, "sh", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _fake_table(tmp_path: Path, where: Path, fstype: str) -> str:
    table = tmp_path / "fake-mountinfo"
    table.write_text(
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n"
        "25 27 0:23 / /dev/shm rw - tmpfs tmpfs rw\n"
        f"40 27 0:50 / {os.path.realpath(where)} rw - {fstype} filer:/export rw\n"
    )
    return f'mount --bind "{table}" /proc/$$/mountinfo'


def test_a_cache_on_nfs_is_refused_unless_allowed(cache_dir: Path, tmp_path: Path) -> None:
    unshare = _namespace_or_skip(tmp_path)
    setup = _fake_table(tmp_path, cache_dir.parent, "nfs4")
    import json

    for how in ("plain", "new"):
        proc = _in_namespace(unshare, setup, [sys.executable, "-c", OPEN, how, str(cache_dir)])
        assert proc.returncode == 0, proc.stderr
        refused = json.loads(proc.stdout)["refused"]
        assert "nfs4" in refused and "filer:/export" in refused and str(cache_dir) in refused
        assert not cache_dir.exists(), "a refused directory is not made"

    proc = _in_namespace(unshare, setup, [sys.executable, "-c", OPEN, "allow", str(cache_dir)])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"written": 5, "created": True}
    assert "nfs4" in proc.stderr and "not promised across hosts" in proc.stderr

    # The command line says so too, and fails (not a cache it can use).
    cli = [sys.executable, "-m", "streamcache", "gc", "--dir", str(cache_dir)]
    proc = _in_namespace(unshare, setup, cli)
    assert proc.returncode != 0
    assert "nfs4" in proc.stderr, proc.stderr


def test_a_local_fuse_file_system_is_not_refused(cache_dir: Path, tmp_path: Path) -> None:
    unshare = _namespace_or_skip(tmp_path)
    setup = _fake_table(tmp_path, cache_dir.parent, "fuse.fuse-overlayfs")
    proc = _in_namespace(unshare, setup, [sys.executable, "-c", OPEN, "plain", str(cache_dir)])
    assert proc.returncode == 0, proc.stderr
    assert '"written": 5' in proc.stdout


def _can_mount_tmpfs(unshare: str, at: Path) -> bool:
    at.mkdir()
    probe = f'mount -t tmpfs -o size=1m tmpfs "{at}"'
    ok = subprocess.run([unshare, "-rm", "sh", "-c", probe], capture_output=True, timeout=30)
    at.rmdir()
    return ok.returncode == 0


@pytest.mark.parametrize(
    "mount, expect",
    [
        # 64 KiB: less than one segment of the default 16384 reader slots (1 MiB).
        ("mount -t tmpfs -o size=64k tmpfs /dev/shm", "less than one entry's shared memory"),
        ("mount -t tmpfs -o ro,size=4m tmpfs /dev/shm", "read-only"),
    ],
    ids=["too-small", "read-only"],
)
def test_an_unusable_dev_shm_is_refused_saying_why(
    cache_dir: Path, tmp_path: Path, mount: str, expect: str
) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        pytest.skip("needs Linux and util-linux unshare")
    if not _can_mount_tmpfs(unshare, tmp_path / "probe"):
        pytest.skip("this kernel lets no unprivileged user mount a tmpfs (unshare -rm)")
    import json

    proc = _in_namespace(unshare, mount, [sys.executable, "-c", OPEN, "plain", str(cache_dir)])
    assert proc.returncode == 0, proc.stderr
    refused = json.loads(proc.stdout)["refused"]
    assert "/dev/shm" in refused and expect in refused, refused


def test_a_small_dev_shm_that_holds_a_segment_works(cache_dir: Path, tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        pytest.skip("needs Linux and util-linux unshare")
    if not _can_mount_tmpfs(unshare, tmp_path / "probe"):
        pytest.skip("this kernel lets no unprivileged user mount a tmpfs (unshare -rm)")
    mount = "mount -t tmpfs -o size=4m tmpfs /dev/shm"
    proc = _in_namespace(unshare, mount, [sys.executable, "-c", OPEN, "plain", str(cache_dir)])
    assert proc.returncode == 0, proc.stderr
    assert '"written": 5' in proc.stdout
