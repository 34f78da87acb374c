"""Local clusters for tests and demos: upstream Kubernetes binaries with kwok, or kind."""
