"""Privacy: DP accounting and calibration, a site's budget flow and ledger, DP randomness, what a site may
disclose, client-level DP, the guarantee's wording and the membership audit."""
