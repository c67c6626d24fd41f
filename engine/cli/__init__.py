"""launcher-engine: the command line, its parser derived from the command table; its quick
path to a running daemon (``quick``) imports nothing else of it."""
