"""Data only: the built-in TOML catalogs (devices, prices, methods, frameworks, models, quality)."""
