"""The one exception type that carries a user-facing message.

Anything the user can fix (a spec field, a dataset folder, an unreadable image) raises
`UserInputError` with a message that names the field or file; the CLI prints that message
alone and exits non-zero instead of showing a traceback.
"""


class UserInputError(ValueError):
    """Bad input from the user: the message names the field or path and says what is wrong."""
