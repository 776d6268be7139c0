"""Recipes: one self-contained file each, with ``main(cfg)``. This table is the only registry (names -> entry).

A test checks it against ``conf/recipe/*.yaml``. Entries are strings so listing them imports no torch.
"""

RECIPES: dict[str, str] = {
    "lora_llama": "recipes.lora_llama:main",
    "full_finetune": "recipes.full_finetune:main",
    "evaluate": "recipes.evaluate:main",
}
