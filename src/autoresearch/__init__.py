"""autoresearch: a harness that lets an agent do ML research by itself, under rules it cannot bend."""

__version__ = "0.1.0"


class UsageError(Exception):
    """A problem with what the user asked for; the CLI prints it as one line and exits with code 2."""
