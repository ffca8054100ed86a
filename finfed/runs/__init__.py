"""A run folder: its layout and status, its checkpoint, its saved model, and the stop request."""
