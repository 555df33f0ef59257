"""A lock on a job's workdir: one job writes to a workdir at a time.

Process 0 of a job creates ``<workdir>/.jaxpref.lock`` atomically (``O_CREAT | O_EXCL``), holding
its host, pid and start time, and removes it when the job ends. A second job on the same workdir
is refused with one line naming the holder. A lock left behind by a job that died (``kill -9``,
a crash) is taken over when its holder's pid no longer runs on this host; a lock from another
host is refused (its holder cannot be checked from here): delete the file if that job is gone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

log = logging.getLogger("jaxpref")

LOCK_FILE = ".jaxpref.lock"


class WorkdirLocked(RuntimeError):
    """Another job holds the workdir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """Context manager; ``WorkdirLock(workdir)`` acquires on enter, releases on exit."""

    def __init__(self, workdir: str):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.held = False

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if other is not None and other.get("host") == self.holder["host"] and not _alive(int(other["pid"])):
                    log.warning("workdir lock %s: its holder (pid %s, since %s) is gone; taking it over",
                                self.path, other["pid"], other.get("started"))
                    os.remove(self.path)
                    continue
                who = (f"pid {other['pid']} on {other.get('host')} since {other.get('started')}" if other
                       else "a job whose lock file is unreadable")
                raise WorkdirLocked(f"{os.path.dirname(self.path)} is in use by {who}; wait for it to finish, use "
                                    f"another --workdir, or delete {self.path} if that job is gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(self.holder, f)
            self.held = True
            return
        raise WorkdirLocked(f"could not take the lock {self.path}")

    def _read(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held and (self._read() or {}).get("pid") == self.holder["pid"]:
            os.remove(self.path)
        self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False
