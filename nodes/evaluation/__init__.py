"""Leakless A/B evaluation runner: prompt sets x workflow variants, queued over any number of ComfyUI servers.

Run from ComfyUI's custom_nodes/ folder: ``python -m leakless.nodes.evaluation --help``. Nothing here imports
ComfyUI or torch; the servers do the work, this package only distributes jobs and collects results.
"""
