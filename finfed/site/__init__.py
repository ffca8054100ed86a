"""A site's side of a federated run: its context and policy, its rounds, what it discloses, its own log."""
