"""The installer: install, upgrade and reset of the immutable A/B OS (docs/installer.md)."""
