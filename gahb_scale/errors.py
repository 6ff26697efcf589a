"""The one exception type that carries a user-facing message.

Anything the user can fix (a spec field, a dataset folder, an unreadable image) raises
`UserInputError` with a message that names the field or file; the CLI prints that message
alone and exits non-zero instead of showing a traceback.
"""

import reprlib


class UserInputError(ValueError):
    """Bad input from the user: the message names the field or path and says what is wrong."""


def printable(text: str) -> str:
    """`text` with every unprintable character escaped (a newline as \\n), so a file name or value
    quoted in a message stays on its line and cannot pose as another line of output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def short_repr(value: object, limit: int = 60) -> str:
    """A printable repr of at most `limit` characters whose work is bounded too: reprlib renders a
    few items, levels and characters of a large value, never the whole of it."""
    text = printable(_SHORT.repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 3, 4, 6, 60, 60
