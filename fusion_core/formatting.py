"""How a value reads to a person: one formatter for the terminal and the HTML report."""

from __future__ import annotations

import datetime as dt


def format_value(value, *, none: str = "", float_format: str = ".4g", max_items: int = 3,
                 brackets: bool = True) -> str:
    """A short text for a number, string, dict or list.

    Args:
        none: the text for None.
        float_format: format spec for floats.
        max_items: longer lists show as ``N items``.
        brackets: wrap dicts in ``{}`` and lists in ``[]``.
    """
    def inner(v) -> str:
        return format_value(v, none=none, float_format=float_format, max_items=max_items, brackets=brackets)

    if value is None:
        return none
    if isinstance(value, float):
        return format(value, float_format)
    if isinstance(value, dt.datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    if isinstance(value, dict):
        text = ", ".join(f"{k}: {inner(v)}" for k, v in value.items())
        return "{" + text + "}" if brackets else text or none
    if isinstance(value, list):
        text = f"{len(value)} items" if len(value) > max_items else ", ".join(inner(v) for v in value)
        return f"[{text}]" if brackets else text or none
    return printable(str(value))


def printable(text: str) -> str:
    """``text`` with control characters (terminal escapes, NUL, newlines) written as ``\\xNN`` escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
