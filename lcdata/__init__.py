"""lcdata: build long-context SFT datasets from raw corpora, and train on them."""

__version__ = "0.1.0"
