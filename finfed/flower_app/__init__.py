"""finfed's two Flower apps, as installed.

Their source is the repository's top-level ``server/`` and ``client/`` folders; a wheel installs them
here (``finfed.flower_app.server``, ``finfed.flower_app.client``) so that no generic top-level module
named ``server`` or ``client`` lands in site-packages. ``finfed.runtime.flower_app`` writes the Flower
app manifest that names them.
"""
