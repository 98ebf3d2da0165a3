"""Small shared helpers with no product logic: retry delays, SQLite, redaction, JSON, files, times, progress."""
