"""registry: see README.md, Architecture."""
