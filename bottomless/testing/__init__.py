"""Public helpers for testing code that uses bottomless, and third-party backends.

- :mod:`bottomless.testing.contract`: the :class:`~bottomless.PageStore` contract suite as a
  pytest mixin, ``PageStoreContract`` (needs pytest).
- :mod:`bottomless.testing.seaweed`: a throwaway local SeaweedFS S3 server (needs the
  ``test`` extra).

Neither is imported by ``import bottomless``: pytest and the test extra are not runtime
dependencies. Import the module you need.
"""
