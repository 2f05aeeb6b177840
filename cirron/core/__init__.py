"""The shared core of cirron. Nothing under this package imports an ML framework."""
