"""Hostile inputs from the issue that found them (#13): handler modules whose import raises
what no well-behaved module raises, and `corpus`, configuration files that each once took the
supervisor down or made `check` print a traceback."""
