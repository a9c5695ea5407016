"""The process that owns one ``tritonserver``: it ends the server's whole process tree and its shared memory.

``tritonserver`` forks a ``triton_python_backend_stub`` per model instance; each stub maps a ``/dev/shm`` region.
When the server dies abruptly (SIGKILL, the OOM killer, its parent killed), busy stubs outlive it with parent
PID 1, holding hundreds of MB each, and their regions stay. Nothing in the server's own tree can clean up after
a SIGKILL, so this small process sits between the launcher and the server:

- it runs the server in a process group of its own (the stubs inherit it) and waits for it; the server gets
  SIGKILL from the kernel if this process dies first (PR_SET_PDEATHSIG in the server: a SIGKILLed reaper cannot
  stop it, and a server left running would hold the ports its restart needs);
- it stops the server (SIGTERM, then SIGKILL after ``--grace`` seconds) when asked (SIGTERM/SIGINT) or when
  its parent dies (the kernel sends it SIGTERM: PR_SET_PDEATHSIG);
- however the server ended, it kills what is left of the group and removes the ``/dev/shm`` regions named with
  the server's unique ``--shm-prefix`` (Triton's ``shm-region-prefix-name``), then exits with the server's code.

Only the standard library is imported: it starts in a few milliseconds.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SHM_FOLDER = Path("/dev/shm")
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def set_parent_death_signal(signum: int) -> None:
    """The kernel sends ``signum`` to the calling process when its parent dies (even by SIGKILL)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def remove_regions(prefix: str) -> int:
    """Removes the ``/dev/shm`` regions whose names start with ``prefix``; returns how many bytes they held."""
    freed = 0
    for region in SHM_FOLDER.glob(f"{prefix}*"):
        try:
            freed += region.stat().st_blocks * 512
            region.unlink()
        except FileNotFoundError:
            pass
    return freed


def kill_group(pgid: int) -> None:
    """SIGKILL to every process of the group, and SIGCONT in case they were stopped (SIGSTOP)."""
    for signum in (signal.SIGKILL, signal.SIGCONT):
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            return


def reap_children() -> bool:
    """Collects exited children (stubs re-parented here); True while any child is left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def run(command: list[str], shm_prefix: str, grace: float, parent: int) -> int:
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    set_parent_death_signal(signal.SIGTERM)
    # Stubs orphaned by the server's death are re-parented to this process, so it can wait for them to end.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        stopping.append(True)
    me = os.getpid()

    def die_with_me() -> None:  # in the server's process, between fork and exec
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != me:  # this process died before the signal was armed
            os._exit(1)

    server = subprocess.Popen(command, process_group=0, preexec_fn=die_with_me)
    try:
        while server.poll() is None and not stopping:
            time.sleep(0.1)
        if server.poll() is None:
            for signum in (signal.SIGTERM, signal.SIGCONT):  # Triton unloads its models and exits on SIGTERM
                os.killpg(server.pid, signum)
            try:
                server.wait(grace)
            except subprocess.TimeoutExpired:
                pass
    finally:
        kill_group(server.pid)
        server.wait()
        deadline = time.monotonic() + 10
        while reap_children() and time.monotonic() < deadline:
            kill_group(server.pid)
            time.sleep(0.05)
        remove_regions(shm_prefix)
    code = server.returncode
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shm-prefix", required=True, help="the server's shm-region-prefix-name")
    parser.add_argument("--grace", type=float, default=20.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--parent", type=int, required=True, help="the launcher's pid")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- tritonserver ARGS")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return run(command, args.shm_prefix, args.grace, args.parent)


if __name__ == "__main__":
    sys.exit(main())
