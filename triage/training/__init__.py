"""Building and measuring the model: corpus, training, evaluation. Never imported by the daemon."""
