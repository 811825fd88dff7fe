"""Media: safe fetching, sizes, video encoding and result storage."""
