"""What is on disk and offered: the LoRA catalog and its metadata."""
