"""The one exception type for bad data inputs."""


class DataError(ValueError):
    """A missing, truncated, corrupt or mismatched data file or data setting.

    The message names the file and the problem in one line, e.g.
    `DataError: /data/web.bin: truncated: the index says 4096 bytes, the file has 1000`.
    """

    def __init__(self, path, problem: str | None = None):
        if problem is None:  # DataError("message"): no file involved
            path, problem = None, path
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
