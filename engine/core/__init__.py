"""Pure rules: plans, lifecycle, queue order, limits, retries, sources, schedule, progress,
errors, events. No asyncio, os or network."""
