"""lightning_marl's built-in plugins (installed as the package ``lightning_marl_plugins``).

Each subpackage registers its plugins with ``@register("plugin", name)`` and is found through the
entry-point group ``lightning_marl.plugins``, exactly like a third-party plugin: the core never
imports this package by name.
"""
