"""Data: formats, chat templates, masking, mixtures and the prepared cache; and the bundled sample dataset.

- ``read``: a file, a directory of shards or a ``save_to_disk`` directory into a ``datasets.Dataset``
  (local or via ``framework.storage``), and what is wrong with a file the library refuses;
- ``rows``: row styles (chat, alpaca, prompt_response; ``auto``), the resolved :class:`rows.Source` of a dataset
  or of each mixture source;
- ``chat``: rendering with the model's chat template and the assistant spans that carry the loss;
- ``tokenize``: batched tokenization and labels;
- ``prepared``: split, mix, pack, the cache key, and the prepared directory training reads;
- ``problems``: ``dataset_problems(cfg)`` for the validation pass;
- ``build_sample``: how ``sample/`` (the demo's data and tokenizer) was made.
"""
