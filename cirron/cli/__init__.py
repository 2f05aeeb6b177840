"""The ``cirron`` command. Imported only by the console script, never by ``import cirron``."""
