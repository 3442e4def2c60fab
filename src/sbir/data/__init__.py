"""Datasets, the one image loader, transforms and stroke rasterisation."""
