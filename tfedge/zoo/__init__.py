"""Reference models and the demo. Nothing in the core imports this package."""
