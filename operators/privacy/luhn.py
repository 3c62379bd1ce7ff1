"""The Luhn (mod 10) checksum of payment card numbers: separates real-looking card numbers from
arbitrary digit runs (order ids, timestamps), so the card detector rarely fires by accident."""

from __future__ import annotations

# digit -> its value when doubled (and reduced by 9 past 9)
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (ASCII 0-9 only, at least 2 of them) passes the Luhn check."""
    if len(digits) < 2 or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    double = False
    for ch in reversed(digits):
        d = ord(ch) - 48
        total += _DOUBLED[d] if double else d
        double = not double
    return total % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that makes ``partial + digit`` Luhn-valid."""
    for d in "0123456789":
        if luhn_valid(partial + d):
            return d
    raise ValueError("not a digit string")  # unreachable for digit strings
