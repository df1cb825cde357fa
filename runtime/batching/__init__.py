"""Dynamic batching of concurrent requests into single engine calls."""
