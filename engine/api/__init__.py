"""The control protocol (stdlib-only types and the command table), the service dispatch, the
daemon and the light client."""
