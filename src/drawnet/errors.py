"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class DrawnetError(Exception):
    """A problem with the user's input: bad config, image, checkpoint or data file."""
