"""Small shared helpers (atomic writes, machine description, allocator tuning)."""
