"""A set of row ids that stays small however many ids it holds.

A run that pages through a million enrollments must remember which it has planned
(two queries may find the same one, and an enrollment planned again in the same
run could be sent a second part). A Python ``set`` of a million ints takes about
60 MB; ids from a sequence are dense, so a bit per possible id takes 125 KB.
"""

from __future__ import annotations

from collections.abc import Iterable


class IdSet:
    """Non-negative integer ids, stored in pages of ``PAGE`` consecutive ids: a page
    holds a small ``set`` while few of its ids are in (sparse ids cost what a set
    costs) and becomes a bitmap of ``PAGE // 8`` bytes once it holds more than
    ``SPARSE`` (dense ids cost one bit each). Membership is exact."""

    SHIFT = 15
    PAGE = 1 << SHIFT  # ids per page: a full page is a 4 KB bitmap
    MASK = PAGE - 1
    SPARSE = 64  # ids a page holds as a set before it turns into a bitmap

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._pages: dict[int, set[int] | bytearray] = {}
        self._count = 0
        for i in ids:
            self.add(i)

    def add(self, value: int) -> bool:
        """Add one id (an int >= 0; ValueError otherwise); True if it was not in yet."""
        if value < 0:
            raise ValueError(f"an id must not be negative, got {value}")
        number, offset = value >> self.SHIFT, value & self.MASK
        page = self._pages.get(number)
        if page is None:
            self._pages[number] = {offset}
        elif isinstance(page, bytearray):
            bit = 1 << (offset & 7)
            if page[offset >> 3] & bit:
                return False
            page[offset >> 3] |= bit
        elif offset in page:
            return False
        else:
            page.add(offset)
            if len(page) > self.SPARSE:
                bits = bytearray(self.PAGE // 8)
                for o in page:
                    bits[o >> 3] |= 1 << (o & 7)
                self._pages[number] = bits
        self._count += 1
        return True

    def update(self, ids: Iterable[int]) -> None:
        for i in ids:
            self.add(i)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int) or value < 0:
            return False
        page = self._pages.get(value >> self.SHIFT)
        if page is None:
            return False
        offset = value & self.MASK
        if isinstance(page, bytearray):
            return bool(page[offset >> 3] & (1 << (offset & 7)))
        return offset in page

    def __len__(self) -> int:
        return self._count

    def nbytes(self) -> int:
        """Roughly the bytes its pages take (a bitmap page ``PAGE // 8``, a set page
        about 40 bytes an id): what a test can hold it to."""
        return sum(
            len(page) if isinstance(page, bytearray) else 40 * len(page) + 200
            for page in self._pages.values()
        )
