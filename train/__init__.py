"""A compact trainer for lcdata's packed shards (reads shards + manifest only)."""
