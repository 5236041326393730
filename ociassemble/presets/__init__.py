"""presets: see README.md, Architecture."""
