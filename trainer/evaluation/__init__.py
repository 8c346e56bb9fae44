"""Evaluation: scores, paired comparisons, robustness, test-time augmentation and the not-an-MRI check."""
