"""The upload-pack program of tools/bench_git.py's clones: it runs ``git upload-pack`` and
records the CPU time of every process of the server side of one clone.

    git clone --upload-pack 'python -I -S bench_git_probe.py LOG_DIR GLOBAL_CONFIG' ...

git runs that through the shell with the repository path appended. The probe forks a
collector that makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), starts
``git upload-pack REPO`` with GIT_CONFIG_GLOBAL set to GLOBAL_CONFIG (an absolute path: the
only place, with the system config, where git honours uploadpack.packObjectsHook) and no
system config, and reaps children until none is left. Every descendant is either waited
for by its parent (its CPU time then counts in that parent's, and so in upload-pack's,
RUSAGE_CHILDREN) or, once orphaned, reparented to the collector: a hook's shared command
that runs in its own session, detached from the invocation that started it, included. So
the collector's getrusage(RUSAGE_CHILDREN), taken when it has no child left, is the CPU
time of all of them. It writes that to a file in LOG_DIR, with upload-pack's exit status
and two parts of the time: upload-pack's own (utime + stime of its /proc/PID/stat, read
while it is a zombie: waitid with WNOWAIT, then wait4) and that of orphans (wait4's figure
for each process reaped other than upload-pack).

The first process exits with upload-pack's status as soon as upload-pack has exited, so
the client's clone ends when it would without the probe; the collector then waits alone
for any detached process. Only the standard library, and no site (-S): start-up is a few
milliseconds, outside the figures (the probe's own time is not in its children's).
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def own_cpu(pid: int) -> float:
    """User + system seconds of a zombie child itself (utime + stime of /proc/PID/stat,
    which a zombie keeps until it is reaped), without those of its children."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def collect(log_dir: str, global_config: str, repo_args: list[str], report_fd: int) -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    env = dict(os.environ, GIT_CONFIG_GLOBAL=global_config, GIT_CONFIG_NOSYSTEM="1")
    t0 = time.monotonic()
    upload_pack = os.posix_spawnp("git", ["git", "upload-pack", *repo_args], env)
    # Hold none of the client's pipes: its stdin, stdout and stderr belong to upload-pack.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    status = 255
    processes = 0
    detached = 0.0  # CPU time of the orphans reparented to the collector
    own = 0.0  # upload-pack's own CPU time, without its children's
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            break
        assert info is not None
        pid = info.si_pid
        if pid == upload_pack:
            own = own_cpu(pid)
        _, wait_status, usage = os.wait4(pid, 0)
        processes += 1
        if pid != upload_pack:
            detached += usage.ru_utime + usage.ru_stime
        else:
            status = exit_code(wait_status)
            os.write(report_fd, str(status).encode())
            os.close(report_fd)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = (
        f'{{"status": {status}, "user": {ru.ru_utime!r}, "sys": {ru.ru_stime!r}, '
        f'"reaped": {processes}, "detached": {detached!r}, "upload_pack": {own!r}, '
        f'"seconds": {time.monotonic() - t0!r}}}\n'
    )
    path = os.path.join(log_dir, f"probe-{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        f.write(record)
    os.rename(path + ".tmp", path)


def main() -> None:
    log_dir, global_config, *repo_args = sys.argv[1:]
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        try:
            collect(log_dir, global_config, repo_args, w)
        finally:
            os._exit(0)
    os.close(w)
    for fd in (0, 1):
        os.close(fd)
    got = os.read(r, 16)
    os._exit(int(got) if got else 255)


if __name__ == "__main__":
    main()
