"""Ready experiment configs and the one-machine runner behind `finfed simulate`."""
