"""Public helpers for testing code that uses bottomless, and third-party backends."""
