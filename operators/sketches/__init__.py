"""Small, bounded-memory summaries used by operators."""
