"""The lock protocol's pure parts: parameters, deadlines, backoff. No I/O here."""
