"""launcher-engine: the command line, its parser derived from the command table."""

from engine import codecache

# before any of the engine's dataclasses is defined: their methods' compile is cached between
# runs (engine.codecache; 25-30 ms of every start, issue 13)
codecache.install()
