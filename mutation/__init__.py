"""Mutation testing for Timestep's core: does the suite notice when the code is subtly wrong?

Each mutation in :mod:`mutation.mutations` is one small, named change to the library (a boundary
moved, an await dropped, a branch swapped, a promise of the README broken). The runner applies them
one at a time to a temporary copy of the repository, never to the checkout itself, runs the tests
that should notice, and reports each mutation as killed (a test failed) or survived (every test
still passed). A survivor is either a missing test or a change that cannot matter; the list says
which, so that the kill rate stays an honest measure of what the suite guards.

A mutation whose snippet no longer matches its module stops the run before anything is tested, so
the list is kept in step with the code it mutates. Run it with ``python -m mutation`` (see
``python -m mutation --help``); it is slow, so it is kept out of ``.ci/run``.
"""
