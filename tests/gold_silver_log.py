"""A small seeded silver log (events, items, users) in the silver contract, for gold tests.

Eight days; the split defaults make 2026-10-07 val and 2026-10-08 test. Some
values appear only on val/test days (user ``u_new``, item ``i_new`` of brand
``brand_new``) so vocabulary tests can look for them; some purchases fall
outside the 24 h attribution window and some carts have no click.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from mtlrec.lake import Lake

DAYS = [f"2026-10-0{d}" for d in range(1, 9)]
VAL_DAY, TEST_DAY = DAYS[-2], DAYS[-1]
UTC = dt.UTC

EVENT_SCHEMA = StructType(
    [
        StructField("event_id", StringType(), False),
        StructField("event_ts", TimestampType(), False),
        StructField("dt", StringType(), False),
        StructField("ingest_dt", StringType(), False),
        StructField("user_id", StringType(), False),
        StructField("session_id", StringType(), True),
        StructField("event_type", StringType(), False),
        StructField("item_id", StringType(), False),
        StructField("request_id", StringType(), True),
        StructField("position", IntegerType(), True),
        StructField("page", StringType(), True),
        StructField("device", StringType(), True),
        StructField("price", DoubleType(), True),
        StructField("quantity", IntegerType(), True),
        StructField("market", StringType(), True),
        StructField("item_known", BooleanType(), True),
        StructField("category_l1", StringType(), True),
        StructField("category_l2", StringType(), True),
        StructField("category_l3", StringType(), True),
        StructField("brand", StringType(), True),
        StructField("item_price", DoubleType(), True),
        StructField("item_created_ts", TimestampType(), True),
        StructField("source_file", StringType(), True),
        StructField("source_line", LongType(), True),
    ]
)
ITEM_SCHEMA = StructType(
    [
        StructField("item_id", StringType(), False),
        StructField("title", StringType(), True),
        StructField("category_l1", StringType(), True),
        StructField("category_l2", StringType(), True),
        StructField("category_l3", StringType(), True),
        StructField("brand", StringType(), True),
        StructField("price", DoubleType(), True),
        StructField("created_ts", TimestampType(), True),
    ]
)
USER_SCHEMA = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("signup_ts", TimestampType(), True),
        StructField("region", StringType(), True),
        StructField("tier", StringType(), True),
    ]
)
_NOUNS = ["shoe", "jacket", "lamp", "mug", "phone case", "backpack", "watch", "kettle"]
_ADJECTIVES = ["red", "light", "leather", "steel", "wireless", "classic", "compact", "cotton"]


@dataclass
class SilverLog:
    events: list[dict[str, Any]]
    items: list[dict[str, Any]]
    users: list[dict[str, Any]]

    def write(self, spark: SparkSession, lake: Lake) -> None:
        """Write the three silver tables (events partitioned by dt) with lake.write_table."""
        lake.write_table(
            spark.createDataFrame(self.events, EVENT_SCHEMA),
            "silver/events",
            mode="overwrite",
            partition_by=["dt"],
        )
        lake.write_table(
            spark.createDataFrame(self.items, ITEM_SCHEMA), "silver/items", "overwrite"
        )
        lake.write_table(
            spark.createDataFrame(self.users, USER_SCHEMA), "silver/users", "overwrite"
        )


def _items(rng: random.Random) -> list[dict[str, Any]]:
    items = []
    for i in range(40):
        l1 = "ABC"[i % 3]
        items.append(
            {
                "item_id": f"i{i:03d}",
                "title": f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {i}",
                "category_l1": l1,
                "category_l2": f"{l1}{i % 4}",
                "category_l3": f"{l1}{i % 4}-{i % 5}",
                "brand": f"b{i % 6}",
                "price": round(rng.uniform(5, 200), 2),
                "created_ts": dt.datetime(2026, 9, 1 + i % 20, tzinfo=UTC),
            }
        )
    items.append(
        {
            "item_id": "i_new",
            "title": "brand new gadget",
            "category_l1": "A",
            "category_l2": "A0",
            "category_l3": "A0-0",
            "brand": "brand_new",
            "price": 99.0,
            "created_ts": dt.datetime(2026, 10, 6, tzinfo=UTC),
        }
    )
    return items


def build_silver_log(seed: int = 3) -> SilverLog:
    rng = random.Random(seed)
    items = _items(rng)
    by_id = {item["item_id"]: item for item in items}
    regular = [item["item_id"] for item in items if item["item_id"] != "i_new"]
    users: list[dict[str, Any]] = [
        {
            "user_id": f"u{u:02d}",
            "signup_ts": dt.datetime(2026, 1, 1, tzinfo=UTC),
            "region": rng.choice(["north", "south"]),
            "tier": rng.choice(["free", "plus"]),
        }
        for u in range(20)
    ]
    users.append({"user_id": "u_new", "signup_ts": None, "region": "east", "tier": "free"})
    events: list[dict[str, Any]] = []

    def add(kind: str, ts: dt.datetime, user: str, item: str, **extra: Any) -> None:
        meta = by_id[item]
        row: dict[str, Any] = {field.name: None for field in EVENT_SCHEMA.fields}
        row.update(
            event_id=f"e{len(events):06d}",
            event_ts=ts,
            dt=ts.date().isoformat(),
            ingest_dt=ts.date().isoformat(),
            user_id=user,
            session_id=f"s-{user}-{ts:%m%d}",
            event_type=kind,
            item_id=item,
            item_known=True,
            category_l1=meta["category_l1"],
            category_l2=meta["category_l2"],
            category_l3=meta["category_l3"],
            brand=meta["brand"],
            item_price=meta["price"],
            item_created_ts=meta["created_ts"],
            source_file="raw/events.jsonl",
            source_line=len(events),
        )
        row.update(extra)
        events.append(row)

    for day_index, day in enumerate(DAYS):
        base = dt.datetime.fromisoformat(day).replace(tzinfo=UTC)
        active = [u["user_id"] for u in users if u["user_id"] != "u_new"]
        if day == TEST_DAY:
            active.append("u_new")
        for user in active:
            for r in range(rng.randint(1, 2)):
                request = f"r-{user}-{day_index}-{r}"
                ts = base + dt.timedelta(minutes=rng.randint(0, 23 * 60))
                context: dict[str, Any] = {
                    "page": rng.choice(["home", "search", "category", "pdp"]),
                    "device": rng.choice(["ios", "android", "web"]),
                    "market": rng.choice(["US", "DE", None]),
                }
                shown = rng.sample(regular, 4)
                if day in (VAL_DAY, TEST_DAY) and rng.random() < 0.3:
                    shown[0] = "i_new"
                for pos, item in enumerate(shown, start=1):
                    position = None if rng.random() < 0.05 else pos
                    add(
                        "impression",
                        ts,
                        user,
                        item,
                        request_id=request,
                        position=position,
                        **context,
                    )
                    if rng.random() >= 0.3:
                        continue
                    click_ts = ts + dt.timedelta(seconds=rng.randint(5, 120))
                    add(
                        "click",
                        click_ts,
                        user,
                        item,
                        request_id=request,
                        position=position,
                        **context,
                    )
                    if rng.random() < 0.5:
                        add(
                            "add_to_cart",
                            click_ts + dt.timedelta(minutes=5),
                            user,
                            item,
                            price=by_id[item]["price"],
                            page="pdp",
                            device=context["device"],
                        )
                    if rng.random() < 0.4:
                        late = rng.random() < 0.25  # outside the 24 h window
                        delay = dt.timedelta(hours=30 if late else rng.randint(1, 20))
                        add(
                            "purchase",
                            click_ts + delay,
                            user,
                            item,
                            price=by_id[item]["price"],
                            quantity=rng.randint(1, 3),
                            page="pdp",
                            device=context["device"],
                        )
                if rng.random() < 0.1:  # a cart with no click: never attributed
                    add("add_to_cart", ts, user, rng.choice(regular), price=10.0, page="pdp")
    return SilverLog(events=events, items=items, users=users)
