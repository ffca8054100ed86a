"""Using a finished run's model: batch prediction and export to a standard Hugging Face folder."""
