"""The ``genre-stream`` command line: one module per command group."""
