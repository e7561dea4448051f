"""The one exception type that the CLI turns into a one-line message."""

from __future__ import annotations


class SrrecnnError(Exception):
    """Bad input from the user: the message names the file or the parameter and the problem.

    ``parameter`` is the library's name of the argument at fault (``"tile"``,
    ``"scale"``, a training setting ...), or None when the message starts with a
    file name. The library never names a command-line flag: ``srrecnn_jax.cli``
    maps ``parameter`` to its option in one table.
    """

    def __init__(self, message: str, parameter: str | None = None):
        super().__init__(message)
        self.message = message
        self.parameter = parameter

    def __str__(self) -> str:
        return f"{self.parameter}: {self.message}" if self.parameter else self.message


class OutputExistsError(SrrecnnError):
    """An output file or folder that exists and is replaced only on request (``force``)."""
