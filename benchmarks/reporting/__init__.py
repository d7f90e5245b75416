"""Reporting: result files (JSON + Markdown) and plots."""
