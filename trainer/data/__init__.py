"""Data: scan the dataset, crop/resize with the shared preprocessing, cache, find duplicates, draw the splits."""
