"""Every Delta table of the lake, named once (docs/tables.md describes their columns).

Code refers to a table through these constants, never through a string literal, so a
rename is one edit and a typo is an import error instead of an empty read.
"""

from __future__ import annotations

BRONZE_EVENTS = "bronze/events"
BRONZE_QUARANTINE = "bronze/quarantine"
BRONZE_SKIPPED_FILES = "bronze/skipped_files"

SILVER_EVENTS = "silver/events"
SILVER_BOT_EVENTS = "silver/bot_events"
SILVER_ITEMS = "silver/items"
SILVER_USERS = "silver/users"
SILVER_TABLES = (SILVER_EVENTS, SILVER_ITEMS, SILVER_USERS)
"""What the gold stage reads: one snapshot of each, recorded in its spec row."""

GOLD_EXAMPLES = "gold/examples"
GOLD_FEATURE_SPEC = "gold/feature_spec"
GOLD_VOCABULARY = "gold/vocabulary"
GOLD_ITEM_TEXT_EMBEDDINGS = "gold/item_text_embeddings"
GOLD_USER_FEATURES = "gold/user_features"
GOLD_ITEM_FEATURES = "gold/item_features"
GOLD_RECOMMENDATIONS = "gold/recommendations"
