"""forum: a Matrix-based, federated discussion forum service."""

__version__ = "0.1.0"
