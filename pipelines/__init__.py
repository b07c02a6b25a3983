"""Image generation only: no HTTP, no database.

Importing this package must stay cheap: torch and diffusers are imported lazily
by the modules that render, so the server can use names and specs without them.
"""
