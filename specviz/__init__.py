"""specviz: an interactive speculative-decoding lab. The engine lives here; views consume its events."""
__version__ = "0.1.0"
