"""Process assembly: the one place that builds a qtask process from its settings."""
