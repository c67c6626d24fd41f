"""What the engine does, composed from core rules and io parts: install, update/repair/rollback,
move, uninstall, and the queue engine."""
