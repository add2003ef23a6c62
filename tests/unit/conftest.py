"""Hypothesis without deadlines: a deadline is a timed assertion, and these
tests run on shared machines where one example can be slow for reasons of
its own (another VM on the same cores)."""

from hypothesis import settings

settings.register_profile("director", deadline=None)
settings.load_profile("director")
