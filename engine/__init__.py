"""The local download and sync engine: plans, downloads, verifies and installs game content."""
