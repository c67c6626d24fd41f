"""launcher-engine: the command line, its parser derived from the command table."""
