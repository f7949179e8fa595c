"""Models, losses, the training loop and its Ray Train wiring."""
