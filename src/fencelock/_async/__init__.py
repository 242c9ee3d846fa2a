"""asyncio handles: the single source of truth; ``fencelock._sync`` is generated from it."""
