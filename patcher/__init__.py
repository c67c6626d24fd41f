"""patcher package."""
