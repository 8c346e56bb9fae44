"""Training: grid files and their typed recipes, the tf.data pipeline and the training loop."""
