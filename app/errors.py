"""Errors an operator sees (CLI, admin API): one readable line, never a stack trace."""


class OperatorError(Exception):
    """A request an operator made that cannot be carried out, e.g. an unknown customer."""


class NotFound(OperatorError):
    """The operator named something that does not exist."""
