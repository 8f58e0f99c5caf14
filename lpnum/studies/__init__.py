"""Reproducible studies behind ``lpnum study ...``."""
