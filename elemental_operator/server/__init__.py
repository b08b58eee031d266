"""HTTP(S) server: registration, seed-image downloads, agent plans and the admin REST API."""
