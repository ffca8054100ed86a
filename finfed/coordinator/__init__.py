"""The coordinator's side of a federated run: rounds, site sampling, secure aggregation, client-level DP."""
