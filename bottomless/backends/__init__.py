"""Storage backends. Each module holds one :class:`~bottomless.pagestore.PageStore`.

They are imported lazily by :func:`bottomless.pagestore.open_store`; the core never imports
them directly.
"""
