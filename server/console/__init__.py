"""The Darkroom console: a web page at /ui served by Darkroom itself, templates and a
little plain JavaScript that talks to Darkroom's own JSON API (it has no private one)."""
