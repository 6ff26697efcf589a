"""The one exception type that carries a user-facing message.

Anything the user can fix (a spec field, a dataset folder, an unreadable image) raises
`UserInputError` with a message that names the field or file; the CLI prints that message
alone and exits non-zero instead of showing a traceback.
"""


class UserInputError(ValueError):
    """Bad input from the user: the message names the field or path and says what is wrong."""


def printable(text: str) -> str:
    """`text` with every unprintable character escaped (a newline as \\n), so a file name or value
    quoted in a message stays on its line and cannot pose as another line of output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
