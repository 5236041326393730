"""engine: see README.md, Architecture."""
