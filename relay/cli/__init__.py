"""The ``outbox-relay`` command: its sub-commands and their options."""
