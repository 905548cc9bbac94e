"""quantplan's plugin system: the hook contract, the manager, and the built-in plugins."""
