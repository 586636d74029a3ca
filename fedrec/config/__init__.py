"""The typed configs of fedrec's commands, how they are composed, and the rules they must obey.

Hydra composes ``configs/<command>.yaml`` into these dataclasses (:func:`compose`); the CLI, the
sweep, ``flwr run`` and tests all go through the same function, and nothing here imports the
jobs that consume the configs.
"""

from fedrec.config.compose import COMMAND_SCHEMAS, compose, config_dir, schema_of

__all__ = ["COMMAND_SCHEMAS", "compose", "config_dir", "schema_of"]
