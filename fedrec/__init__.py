"""fedrec: federated recommendation with differential privacy.

The data flows one way: ``fedrec.data`` (logs, splits) → ``fedrec.model`` (MF, the training
step) → ``fedrec.eval`` (per-user metrics). ``fedrec.cli`` holds the command-line entry points.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
