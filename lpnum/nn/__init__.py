"""Flax layers, quantization recipes and model integration."""
