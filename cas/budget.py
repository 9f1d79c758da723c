"""The node-wide buffer budget: how many bytes of block buffers all transfers may hold at once.

Each upload takes from it for every segment it has in flight (read, being sealed and stored, or waiting for
its holders) and gives back when the segment is done. A transfer with nothing in flight may always take one
piece, over the budget if need be, so that every transfer moves and none starves; past that it waits, and its
source is paused meanwhile (backpressure reaches the HTTP client). Waiters are served in arrival order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class Budget:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a budget must be positive")
        self.capacity = capacity
        self.used = 0
        self._waiters: deque[Callable[[], None]] = deque()

    def take(self, n: int, first: bool = False) -> bool:
        """Take ``n`` bytes if they fit (always, when ``first``: the caller holds nothing yet)."""
        if first or self.used + n <= self.capacity:
            self.used += n
            return True
        return False

    def give(self, n: int) -> None:
        self.used -= n
        if self.used < 0:
            raise AssertionError("budget given back more than was taken")
        while self._waiters and self.used < self.capacity:
            self._waiters.popleft()()

    def wait(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when some bytes were given back (it should try ``take`` again)."""
        self._waiters.append(callback)

    def forget(self, callback: Callable[[], None]) -> None:
        try:
            self._waiters.remove(callback)
        except ValueError:
            pass
