"""Recipes: one self-contained file each, with ``main(cfg)``. This table is the only registry (names -> entry).

A test checks it against ``conf/recipe/*.yaml``. Entries are strings so listing them imports no torch.
"""

RECIPES: dict[str, str] = {
    "lora_llama": "recipes.lora_llama:main",
    "full_finetune": "recipes.full_finetune:main",
    "evaluate": "recipes.evaluate:main",
}

# What each training recipe trains: "lora" (adapters only) | "full" (every weight). The recipe's name is the one
# choice; validation, the memory estimate and checkpoint compatibility read this table, not a second config key.
TRAINS: dict[str, str] = {
    "lora_llama": "lora",
    "full_finetune": "full",
}


def trains(recipe_name: object) -> str | None:
    """``TRAINS[recipe_name]``; None for a recipe that trains nothing (or an unknown name)."""
    return TRAINS.get(str(recipe_name))
