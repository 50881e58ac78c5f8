"""smallNORB on disk: the binary matrix format, the official files and their MD5s, loading, identity."""

from __future__ import annotations

from robustcaps.data.norb_format import NorbFormatError, read_matrix, write_matrix

__all__ = ["NorbFormatError", "read_matrix", "write_matrix"]
