"""layers: see README.md, Architecture."""
