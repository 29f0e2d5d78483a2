"""Thin command-line front-ends: each parses its arguments and calls the library."""
