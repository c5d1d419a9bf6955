"""Example third-party plugins for foundation (see docs/PLUGINS.md).

The plugin classes and the hooks that register them live in :mod:`foundation_example_plugin.plugin`,
which the package's pyproject.toml declares under the ``foundation`` entry-point group.
"""
