"""Models: the backbone, its LoRA adapters, the pooled classifier and the extractive QA pipeline finfed exports."""
