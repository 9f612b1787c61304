"""Training programs built on needle: course apps, the CLI trainer and the demo."""
