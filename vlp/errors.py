"""The one exception type that the CLI turns into a one-line message."""


class VLPError(Exception):
    """A user-facing error: bad recipe, bad override, bad data path.

    `vlp` prints ``vlp: error: <message>`` and exits with status 2, no traceback.
    """
