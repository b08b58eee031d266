"""elemental-system-agent: polls the operator for its plan and applies it (docs/installer.md)."""
