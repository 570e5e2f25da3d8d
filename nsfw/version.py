"""The service's version, as pyproject.toml says it (a test keeps the two the same): the checkout is
served as it is, never installed as a package, so there is no package metadata to read it from."""

VERSION = "1.0.0"
