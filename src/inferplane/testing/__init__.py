"""Helpers for the test suites: real servers started from the machine's own binaries."""
