"""One run per output directory: a lock file naming the process that holds it.

output_dir/.lock   {"pid": 1234, "host": "node7", "started": "2026-...", "token": "...", "proc_start": ...}

Taken with O_EXCL semantics (the file is written complete under a temporary name, then hard-linked
into place, which fails if a lock exists), so two runs cannot both believe they hold it. A lock is
stale, and taken over, when its process is gone: same host and the PID no longer runs (or runs a
different program since, told by its start time in /proc). A lock from another host cannot be
checked from here; the error names the host and PID and says to delete the file if that run is over.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

from ..errors import KrMiniLlmError

LOCK_NAME = ".lock"


class RunLockedError(KrMiniLlmError, RuntimeError):
    """Another live run holds the output directory."""


def _proc_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (Linux), or None where /proc has none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 counted after the parenthesised name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class RunLock:
    """`with RunLock(output_dir): ...`, or acquire()/release(). Re-entrant within one process."""

    def __init__(self, directory: str | os.PathLike, what: str = "output directory"):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.what = what
        self.token = None

    def acquire(self) -> "RunLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "proc_start": _proc_start(os.getpid()), "token": secrets.token_hex(8)}
        tmp = self.directory / f".lock.{me['pid']}.{me['token']}.tmp"
        tmp.write_text(json.dumps(me))
        try:
            for _ in range(3):  # a stale lock is removed, then the link is tried again
                try:
                    os.link(tmp, self.path)
                    self.token = me["token"]
                    return self
                except FileExistsError:
                    pass
                holder = self._read()
                if holder is not None and holder.get("pid") == me["pid"] and holder.get("host") == me["host"] \
                        and holder.get("proc_start") == me["proc_start"]:
                    self.token = holder.get("token")  # this process already holds it (another Trainer)
                    return self
                if holder is not None and not self._stale(holder, me["host"]):
                    raise RunLockedError(self._message(holder, me["host"]))
                try:  # stale or unreadable (never: it is written whole before the link) -> take over
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
            raise RunLockedError(f"{self.directory}: could not take the lock {self.path}; another run keeps "
                                 "taking it")
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Removes the lock if it is still ours."""
        if self.token is None:
            return
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    # -- helpers -------------------------------------------------------------------------------------
    def _read(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # damaged: treated as stale

    @staticmethod
    def _stale(holder: dict, host: str) -> bool:
        pid = holder.get("pid")
        if not isinstance(pid, int) or holder.get("host") is None:
            return True
        if holder["host"] != host:
            return False  # cannot tell from here
        if not _alive(pid):
            return True
        started = holder.get("proc_start")
        return started is not None and _proc_start(pid) not in (None, started)  # the PID was reused

    def _message(self, holder: dict, host: str) -> str:
        where = "this machine" if holder.get("host") == host else f"host {holder.get('host')}"
        return (f"{self.directory} is in use by another run (PID {holder.get('pid')} on {where}, since "
                f"{holder.get('started')}): two runs on one {self.what} would overwrite each other's "
                f"checkpoints. Wait for it to finish or choose another directory; if that run is over "
                f"(e.g. its machine went down), delete {self.path}")
