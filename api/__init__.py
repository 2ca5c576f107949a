"""Presentation and ways in: the Starlette app, the OAuth2 endpoints, the CLI."""
