"""The project's exceptions.

Library code raises these with a message a user can read as it is; the command
line prints the message as one line on stderr and exits with code 2.
"""


class MotexError(Exception):
    """Bad input or a refused operation; the message is shown to the user."""


class InputError(MotexError):
    """A file, value or name given by the user cannot be used."""


class DatabaseError(MotexError):
    """The database cannot be reached, or holds a schema this version cannot use."""
