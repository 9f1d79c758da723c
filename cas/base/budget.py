"""The node-wide buffer budget: how many bytes of block buffers all transfers may hold at once.

Each upload takes from it for every segment it has in flight (read, being sealed and stored, or waiting for
its holders) and gives back when the segment is done. What does not fit waits, its source paused meanwhile
(backpressure reaches the HTTP client); waiters are served in arrival order, so none starves, and a piece larger
than the whole budget is let through when nothing else holds any (it could never fit otherwise).

Each download takes one segment for every block it fetches ahead of its reader and gives it back when the
block is delivered. Downloads together may hold half of the budget (a paused reader keeps what it fetched
ahead, so readers must not be able to lock uploads out); past that a download does not fetch further ahead.
A download with nothing in flight takes one segment regardless (``force``): forced segments are counted apart,
past the budget, so every download progresses, uploads keep their share, and memory is bounded by the budget
plus one segment per download. Uploads are served first come, first served: while one waits, ``take``
refuses other uploads but the waiter being woken.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.logger import Logger

log = Logger()


class Budget:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a budget must be positive")
        self.capacity = capacity
        self.used = 0  # everything taken, forced segments included
        self.downloads = 0  # of ``used``: taken by downloads (not forced)
        self.forced = 0  # of ``used``: forced past the budget, one segment per download at most
        self._waiters: deque[Callable[[], None]] = deque()
        self._waking = False  # a woken waiter is taking: the queue behind it does not stop it

    def take(self, n: int, download: bool = False) -> bool:
        """Take ``n`` bytes if they fit (or if nothing is taken: a piece larger than the budget still goes).

        An upload is refused while other uploads wait (first come, first served); a download past the
        downloads' half."""
        core = self.used - self.forced
        if download:
            if self.downloads + n > self.capacity // 2:
                return False
        elif self._waiters and not self._waking:
            return False
        if core + n <= self.capacity or core == 0:
            self.used += n
            if download:
                self.downloads += n
            return True
        return False

    def force(self, n: int) -> None:
        """Take ``n`` bytes past the budget: a download with nothing in flight must progress."""
        self.used += n
        self.forced += n

    def give(self, n: int, download: bool = False, forced: bool = False) -> None:
        self.used -= n
        if forced:
            self.forced -= n
        elif download:
            self.downloads -= n
        if self.used < 0 or self.downloads < 0 or self.forced < 0:
            raise AssertionError("budget given back more than was taken")
        # Each waiter is woken once per give, in arrival order; one that still does not fit waits again, last.
        for _ in range(len(self._waiters)):
            if not self._waiters or self.used - self.forced >= self.capacity:
                break
            waiter = self._waiters.popleft()
            outer, self._waking = self._waking, True
            try:
                waiter()
            except Exception:  # a waiter's failure is its own: the giver and the other waiters go on
                log.failure("a transfer waiting for the buffer budget failed")
            finally:
                self._waking = outer

    def wait(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when some bytes were given back (it should try ``take`` again)."""
        self._waiters.append(callback)

    def forget(self, callback: Callable[[], None]) -> None:
        try:
            self._waiters.remove(callback)
        except ValueError:
            pass
