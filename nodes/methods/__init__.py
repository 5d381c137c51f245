"""The methods (pure: never imports ComfyUI): Follow the Flow's row edits and redundant-token rules, DeLeaker,
attention heatmaps, ToMe, and for the sampling-time ones a per-run controller on the contract in contract.py."""
