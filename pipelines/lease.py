"""One runner per step folder: a lease file with a heartbeat.

`run-step` takes `<step folder>/_LEASE.json` (owner token, host, pid, heartbeat time)
before it runs a step, renews it from a background thread, and gives it back when the
step is done. A second runner finds the lease and exits with a message naming the holder
(exit 4), or waits for it when asked. A lease whose heartbeat is older than
`lease.timeout_seconds` belongs to a runner that died: it is taken over, and the takeover
is logged; so is, at once, a lease whose holder ran on this host and whose process is gone.
`_SUCCESS.json` and the removal of scratch happen only while the lease is still
held (`Lease.check`), so a runner that lost its lease (it stalled past the timeout and
another took over) stops instead of finishing a step twice: its heartbeat thread, finding
the lease gone, interrupts the main thread, and whatever the runner was doing ends as
LeaseLost (exit 4).

Taking a free lease is an exclusive create (atomic on local and POSIX shared
filesystems). A takeover writes the new lease and reads it back; of two runners taking
over at once, the one whose write landed last holds it, and the other sees so and yields.
Heartbeats are wall-clock times: the runners' clocks must agree to well within the
timeout (NTP does).
"""

from __future__ import annotations

import _thread
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from stages import storage

LEASE = "_LEASE.json"


class LeaseHeld(RuntimeError):
    """Another live runner holds the step's lease."""


class LeaseLost(RuntimeError):
    """This runner's lease was taken over (its heartbeat stopped for too long)."""


@dataclass(frozen=True)
class Holder:
    token: str
    owner: str
    host: str
    pid: int
    step: str
    acquired: float
    heartbeat: float

    @property
    def age(self) -> float:
        return time.time() - self.heartbeat

    def gone(self) -> bool:
        """True when the holder ran on this host and its process no longer exists."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # a live process of another user
            return False
        return False

    def describe(self) -> str:
        return (f"{self.owner} (host {self.host}, pid {self.pid}), heartbeat {self.age:,.0f} s ago, "
                f"holding it since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self.acquired))}")


def _log(msg: str) -> None:
    print(f"tokenmill: {msg}", file=sys.stderr, flush=True)


def read_holder(url: str) -> Holder | None:
    try:
        return Holder(**json.loads(storage.read_bytes(url)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # a lease being replaced right now, or garbage: treat as stale
        return Holder("?", "unknown", "?", -1, "?", 0.0, 0.0)


class Lease:
    """The lease of one step folder; use as a context manager around the step's work."""

    def __init__(self, step_url: str, step: str, owner: str, timeout: float, heartbeat: float, wait: bool = False,
                 poll: float | None = None):
        self.url = storage.join(step_url, LEASE)
        self.step, self.owner = step, owner
        self.timeout, self.heartbeat_every, self.wait = timeout, heartbeat, wait
        self.poll = poll if poll is not None else min(5.0, heartbeat)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self.took_over: Holder | None = None

    def _mine(self, acquired: float) -> Holder:
        return Holder(self.token, self.owner, socket.gethostname(), os.getpid(), self.step, acquired, time.time())

    def acquire(self) -> "Lease":
        while True:
            now = time.time()
            if storage.create_exclusive(self.url, storage.json_bytes(asdict(self._mine(now)))):
                break
            held = read_holder(self.url)
            if held is None:
                continue  # released meanwhile: try again
            if held.token == self.token:
                break
            if held.age > self.timeout or held.gone():
                storage.atomic_write_json(self.url, asdict(self._mine(now)))
                time.sleep(min(1.0, self.poll))  # let a concurrent taker's write land, then see who won
                again = read_holder(self.url)
                if again is not None and again.token == self.token:
                    self.took_over = held
                    why = "its process is gone" if held.gone() else f"older than the {self.timeout:,.0f} s timeout"
                    _log(f"{self.step}: took over the lease of {held.describe()} ({why}): that runner stopped")
                    break
                continue
            if not self.wait:
                raise LeaseHeld(f"step {self.step} is being run by {held.describe()}; it is taken over once its "
                                f"heartbeat is {self.timeout:,.0f} s old. Wait for it, or rerun with --wait-for-lease")
            time.sleep(self.poll)
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.step}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        acquired = time.time()
        while not self._stop.wait(self.heartbeat_every):
            held = read_holder(self.url)
            if held is None or held.token != self.token:
                self._lost = "taken over by " + (held.describe() if held else "nobody (the lease file is gone)")
                _thread.interrupt_main()  # stop the work now: another runner owns the step
                return
            storage.atomic_write_json(self.url, asdict(self._mine(held.acquired or acquired)))

    def held(self) -> bool:
        held = read_holder(self.url)
        return not self._lost and held is not None and held.token == self.token

    def check(self) -> None:
        """Raise LeaseLost unless this runner still holds the lease."""
        if not self.held():
            raise self.lost_error()

    def lost_error(self) -> LeaseLost:
        return LeaseLost(f"step {self.step}: this runner's lease was {self._lost or 'lost'}; stopping without "
                         "finishing the step (the holder finishes it)")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = read_holder(self.url)
        if held is not None and held.token == self.token:
            storage.remove(self.url)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
