"""Reports of a run and of a site's ledger, from the run folder's records."""
