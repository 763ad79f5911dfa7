"""One exception type for every problem a user can fix; the CLI prints it as one line."""


class MetasegError(Exception):
    """A user-facing error: its message names the file or option at fault and is shown without a traceback."""
