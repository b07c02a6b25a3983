"""The HTTP surfaces: the contract's routes and views, events (SSE), image files, health
and metrics, OpenAPI and its docs page, request logging and the one exception map."""
