"""Readable float64 references of every kernel, used by the test suite and by users who want
to check the fast paths against plain numpy."""
