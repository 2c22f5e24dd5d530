"""Bad-input cases of each method family, collected by tests/test_bad_input.py."""
