"""Bad model factories for tests/test_diagnose.py."""


def not_a_landscape():
    return 42
