"""finfed's Flower ClientApp."""
