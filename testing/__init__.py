"""Test and benchmark helpers shared by tests/ and bench/: real processes on loopback, the
fault-injecting proxy, engine CLI runs, test data. Never shipped; never a mock of our parts."""
