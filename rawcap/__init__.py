"""rawcap shared plumbing: CLI, configuration, logging, Kafka helpers, local stack.

Services (capture, enrich, archiver, dissector, forensics) import this package and
``schemas``, never each other.
"""

__all__ = ("__version__",)

__version__ = "0.1.0"
