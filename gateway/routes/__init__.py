"""One router per concern: predictions, health and metrics, model versions."""
