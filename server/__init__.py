"""finfed's Flower ServerApp."""
