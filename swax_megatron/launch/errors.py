"""The one exception type launching raises: its message is the single line a user sees."""


class LaunchError(ValueError):
    """A recipe that cannot run on this cluster, or a scheduler command that failed."""
