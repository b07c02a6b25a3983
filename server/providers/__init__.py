"""Providers: the places a generation can render (router.py decides): this server's own
device pool, fal.ai's queue API (fal.py) and any AUTOMATIC1111-compatible server
(rundiffusion.py), the remote ones watched by runner.py."""
