"""OpenAI's Images API (/v1): generations, edits, variations, models."""
