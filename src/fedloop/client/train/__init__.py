"""Local training: the recipe (SFT / DPO), its data mix and curriculum, and drafting with the chat template."""
