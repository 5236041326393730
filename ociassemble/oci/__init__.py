"""oci: see README.md, Architecture."""
