"""Exceptions whose messages tell the user what is wrong and what to do; the CLI prints them as one line."""


class DefectmapError(Exception):
    """Base of every error the CLI reports as one line and exit code 2."""


class ConfigError(DefectmapError):
    """A configuration key or value is invalid."""


class DataError(DefectmapError):
    """A dataset, image or mask is missing, unreadable or inconsistent."""


class CheckpointError(DefectmapError):
    """A checkpoint is missing, corrupted or from an unknown format version."""


class OutputError(DefectmapError):
    """An output file cannot be written (full disk, read-only location)."""
