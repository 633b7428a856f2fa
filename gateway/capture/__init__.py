"""Capture: a share of production images, kept with what the model answered, for labelling and retraining.

``policy`` says what of a model's traffic is kept (decided on the request path), ``store`` keeps the images
and their rows, ``worker`` carries a capture from the one to the other off the request path.
"""
