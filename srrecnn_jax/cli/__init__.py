"""The ``srrecnn`` command line: ``main`` parses, calls one library function, reports."""

from srrecnn_jax.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
