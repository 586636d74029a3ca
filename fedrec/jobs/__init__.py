"""Plain job functions (config in, metrics out) that the hydra entry points in ``cli.py`` call."""
