"""Count-min sketch (Cormode & Muthukrishnan): approximate counts of many keys in fixed memory,
never under-estimating; with width w and depth d the over-estimate is ≤ e/w · total with
probability ≥ 1 − e^−d. ``SlidingCountMin`` keeps two of them to approximate a sliding window."""

from __future__ import annotations

from array import array

_MASK64 = (1 << 64) - 1


class CountMin:
    __slots__ = ("width", "depth", "rows", "total")

    def __init__(self, width: int = 2048, depth: int = 4):
        if width < 1 or depth < 1:
            raise ValueError("width and depth must be >= 1")
        self.width = width
        self.depth = depth
        self.rows: list[array[int]] = [array("I", [0]) * width for _ in range(depth)]
        self.total = 0

    def _cells(self, h: int) -> list[int]:
        # Kirsch–Mitzenmacher: d indexes from two halves of one 64-bit hash
        h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
        w = self.width
        return [((h1 + i * h2) & _MASK64) % w for i in range(self.depth)]

    def add(self, h: int, n: int = 1) -> int:
        """Count key hash ``h`` (a 64-bit int) ``n`` times; returns its new estimate."""
        est = None
        for row, j in zip(self.rows, self._cells(h)):
            v = min(row[j] + n, 0xFFFFFFFF)
            row[j] = v
            est = v if est is None or v < est else est
        self.total += n
        return est or 0

    def estimate(self, h: int) -> int:
        return min(row[j] for row, j in zip(self.rows, self._cells(h)))

    def clear(self) -> None:
        zero = array("I", [0]) * self.width
        for row in self.rows:
            row[:] = zero
        self.total = 0

    @property
    def memory_bytes(self) -> int:
        return sum(row.itemsize * len(row) for row in self.rows)


class SlidingCountMin:
    """Counts over (approximately) the last ``window_ns``: the current window's sketch plus the
    previous one weighted by the part of it still inside the sliding window. Two sketches, rotated
    by the time passed in — fixed memory, however many keys."""

    __slots__ = ("window_ns", "current", "previous", "start_ns")

    def __init__(self, window_ns: int, width: int = 2048, depth: int = 4):
        self.window_ns = window_ns
        self.current = CountMin(width, depth)
        self.previous = CountMin(width, depth)
        self.start_ns: int | None = None

    def _rotate(self, now_ns: int) -> int:
        """Move to the window holding ``now_ns``; returns that window's start."""
        if self.start_ns is None:
            self.start_ns = now_ns
            return now_ns
        passed = (now_ns - self.start_ns) // self.window_ns
        if passed <= 0:
            return self.start_ns
        self.previous, self.current = self.current, self.previous
        self.current.clear()
        if passed > 1:
            self.previous.clear()
        self.start_ns += passed * self.window_ns
        return self.start_ns

    def add(self, h: int, now_ns: int, n: int = 1) -> float:
        """Count ``h`` at ``now_ns``; returns its sliding-window estimate (this one included)."""
        start = self._rotate(now_ns)
        cur = self.current.add(h, n)
        frac = 1.0 - min(1.0, max(0.0, (now_ns - start) / self.window_ns))
        return cur + frac * self.previous.estimate(h)

    def estimate(self, h: int, now_ns: int) -> float:
        start = self._rotate(now_ns)
        frac = 1.0 - min(1.0, max(0.0, (now_ns - start) / self.window_ns))
        return self.current.estimate(h) + frac * self.previous.estimate(h)

    @property
    def memory_bytes(self) -> int:
        return self.current.memory_bytes + self.previous.memory_bytes
