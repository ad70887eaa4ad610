"""The tests, a package so that they share helpers (``tests.tiny``) by import and never edit ``sys.path``."""
