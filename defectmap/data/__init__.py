"""Datasets on disk, image loading, the shared pre-processing, and the built-in demo data."""
