"""Local training at a site: the DP-SGD (or plain) loop over its own data."""
