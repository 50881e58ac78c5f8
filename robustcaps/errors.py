"""The one exception a user can cause; the CLI turns it into a one-line error."""


class RobustcapsError(Exception):
    """A problem with the user's input (a file, an option, a run directory).

    The message must name the file or option at fault and say what to do.
    """
