"""Deployment across real sites: a consortium's PKI, site configuration, and Flower's deployment engine.

``finfed deploy init|coordinator|site|run`` (see docs/deployment.md) wrap Flower's
``flower-superlink``, ``flower-supernode`` and ``flwr`` commands with TLS, SuperNode
authentication and site-side checks; the same ServerApp and ClientApp as in simulation run.
"""
