"""The emoji world: the same emoji in three styles (Noto, Twemoji = open world; OpenMoji = domain).

Import from the submodule, e.g. ``from indomain.world.render import list_emoji, render``. Nothing is
re-exported here on purpose: re-exporting the function ``render`` would shadow the submodule
``indomain.world.render`` (``import indomain.world.render as m`` would then return the function).
"""
