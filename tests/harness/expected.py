"""What the pack must register. Node ids and their ordered input ids are pinned: saved workflows depend on them,
so a released id or input order never changes (add new inputs at the end, as optional)."""

SCHEMAS = {
    "LeaklessTokenInspector": ["clip", "text"],
}
EXPECTED_NODE_IDS = sorted(SCHEMAS)
