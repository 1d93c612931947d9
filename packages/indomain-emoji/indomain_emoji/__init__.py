"""The emoji world's shipped weights, as package data (see README.md); no code. indomain opens them through
``indomain.world.render.shipped_weights``."""
