"""The errors of a dataset that cannot be used (exit 2): one line that says what to do."""

from __future__ import annotations

from mlit.errors import BadInput


class DatasetError(BadInput):
    """A dataset that cannot be used; one line saying what to do."""


class DatasetMissing(DatasetError):
    """The dataset is not on disk; the message says where to put it or how to download it."""


class DatasetInvalid(DatasetError):
    """A dataset file is damaged or holds something else; the message names the file."""
