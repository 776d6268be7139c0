"""Data shipped with the framework: the bundled sample dataset and its tokenizer (see ``build_sample``)."""
