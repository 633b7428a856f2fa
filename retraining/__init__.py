"""From production images back to a better model: captured datasets, fine-tuning and retraining as a release."""
