"""Errors of the whole prep job (single bad images are rejects, never errors)."""


class PrepInputError(ValueError):
    """An unusable source, landmark file or output directory; the CLI exits 2 on it."""
