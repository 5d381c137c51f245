"""Prompts and their tokens (pure: never imports ComfyUI): the alignment of a prompt with each text encoder's tokens,
the grammar users name parts of a prompt in, and the tags that tie a conditioning to the prompt it encodes."""
