"""The one exception the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """A bad input or an impossible request: the message says what is wrong and what to do.

    exit_code 2 is for usage and input errors (as click uses it); other codes are for states such as a
    running training that holds the experiment.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
