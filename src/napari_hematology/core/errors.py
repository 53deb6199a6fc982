"""Errors that carry a message meant for the user, not a traceback."""


class HematologyError(Exception):
    """An error whose message tells the user what went wrong and what to do.

    The CLI prints it as one line and exits with code 2; widgets show it with ``show_error``.
    """


class InputError(HematologyError, ValueError):
    """The input (file, table, image, parameters) cannot be used as given."""


class ModelFileError(HematologyError):
    """A model folder is missing, corrupt, or was made for something else."""


class Cancelled(HematologyError):
    """Long work was cancelled by the user."""
