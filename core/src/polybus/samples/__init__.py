"""Sample event corpora shipped with polybus."""
