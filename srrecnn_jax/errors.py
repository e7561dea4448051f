"""The one exception type that the CLI turns into a one-line message."""


class SrrecnnError(Exception):
    """Bad input from the user: the message names the file or option and the problem."""
