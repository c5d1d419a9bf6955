"""Layer 1, the core: errors, atomic file writes, the typed recipe schema and its loading, overrides
and hash, and the plugin API, hooks and registry.  Imports nothing else from foundation."""
