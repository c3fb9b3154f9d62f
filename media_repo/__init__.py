"""Media repository: uploads, downloads, thumbnails, storage providers and remote media."""
