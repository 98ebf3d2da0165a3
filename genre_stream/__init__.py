"""genre-stream: real-time music genre tagging with the BBNN network."""

__version__ = "0.1.0"
