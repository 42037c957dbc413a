"""The one exception type users see: a clear, one-line reason why a command cannot go on."""


class ThinksaeError(Exception):
    """Bad input or an unusable artefact. The CLI prints its message on one line and exits 2."""
