"""Drift detection: references carried by archives, calibrated online detectors, and their benchmark."""
