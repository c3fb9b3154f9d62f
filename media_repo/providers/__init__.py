"""Where media bytes live: the local filesystem (default) or S3-compatible storage."""
