"""transport: see README.md, Architecture."""
