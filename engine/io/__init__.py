"""The I/O shell: CDN fetches, block decode/verify/write, staging, local copies, verify, journal,
state (SQLite), backend client, credentials, config."""
