"""Reading numbers and text from outside: the one way every face does it.

Only ASCII digits make a number (`str.isdigit` also takes "²" and "٥", and `int` then raises
or reads 5), and never more digits than the value can need: a 5,000-digit "number" is
refused before `int` spends time on it or a database column overflows.
"""

MAX_ROW_ID = 2**31 - 1  # the id columns' range (INTEGER): a larger id names nothing
ROW_ID_DIGITS = len(str(MAX_ROW_ID))


def whole_number(text: str, max_digits: int) -> int | None:
    """`text` as a non-negative int, or None unless it is 1…max_digits ASCII digits."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def row_id(text: str) -> int | None:
    """`text` as an id a table can hold (1 … 2**31 - 1), or None."""
    number = whole_number(text, ROW_ID_DIGITS)
    return number if number is not None and 1 <= number <= MAX_ROW_ID else None


def is_unicode(*texts: str) -> bool:
    """False for text with a lone surrogate (a JSON `\\udc80` escape makes one): it cannot be
    encoded as UTF-8, so it can be neither stored, logged nor sent upstream."""
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
