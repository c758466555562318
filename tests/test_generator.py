"""The synthetic log generator: determinism, rates, dirt vs. manifest, truth, learnability.

The raw files are checked by an independent reference reader written here from
the contract (DESIGN.md 4.1, mtlrec/raw_contract.py), not by the generator's code.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from jobs.generate_logs import main
from mtlrec.config import ConfigError, load_config
from mtlrec.raw_contract import EVENT_TYPES, REQUIRED_FIELDS, QuarantineReason, SilverOutcome
from mtlrec.synthetic.config import LINE_DEFECTS, DirtConfig, GeneratorConfig

LONG_LINE_BYTES = 4_000
MAX_LINE_BYTES = 3_000  # the reference reader's limit; normal lines are a few hundred bytes
TINY = [
    "generator.num_users=150", "generator.num_items=100", "generator.num_days=4",
    "generator.users_per_shard=60", "generator.processes=1",
    *(f"generator.dirt.{name}=0.01" for name in LINE_DEFECTS),
    "generator.dirt.line_too_long=0.002", f"generator.dirt.long_line_bytes={LONG_LINE_BYTES}",
    "generator.dirt.bot_active_day_share=1.0", "generator.dirt.bot_events_per_day=600",
]
MEDIUM = [
    "generator.num_users=1200", "generator.num_items=400", "generator.num_days=8",
    "generator.processes=1", "generator.seed=11",
]


def _generate(root: Path, overrides: list[str], *extra: str) -> int:
    args = ["--out", str(root / "raw"), "--truth-out", str(root / "truth"), *extra]
    for item in overrides:
        args += ["--set", item]
    return main(args)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    assert _generate(root, TINY) == 0
    return root


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("medium")
    assert _generate(root, MEDIUM) == 0
    return root


# --- an independent reader of the raw contract ---

@dataclass
class RawLine:
    file_dt: str
    data: bytes
    verdict: str  # a QuarantineReason code, or "ok"
    event: dict[str, Any] = field(default_factory=dict)
    ts: dt.datetime | None = None


def _timestamp(value: Any) -> dt.datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value / 1000, tz=dt.UTC)
    try:
        return dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None


_TYPES: dict[str, tuple[type, ...]] = {
    "event_id": (str,), "user_id": (str,), "item_id": (str,), "event_type": (str,),
    "session_id": (str,), "request_id": (str,), "page": (str,), "device": (str,),
    "ts": (str, int), "position": (int,), "price": (int, float), "quantity": (int,),
}


def classify(data: bytes, window: tuple[dt.datetime, dt.datetime]) -> tuple[str, dict[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return QuarantineReason.INVALID_ENCODING, {}
    if "\x00" in text:
        return QuarantineReason.INVALID_ENCODING, {}
    if len(data) > MAX_LINE_BYTES:
        return QuarantineReason.LINE_TOO_LONG, {}
    try:
        event = json.loads(text)
    except ValueError:
        started = text.lstrip().startswith("{")
        return (QuarantineReason.TRUNCATED_JSON if started else QuarantineReason.NOT_JSON), {}
    if not isinstance(event, dict):
        return QuarantineReason.NOT_AN_OBJECT, {}
    if any(event.get(name) in (None, "") for name in REQUIRED_FIELDS):
        return QuarantineReason.MISSING_FIELD, {}
    for name, types in _TYPES.items():
        value = event.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            return QuarantineReason.WRONG_TYPE, {}
    ts = _timestamp(event["ts"])
    if ts is None:
        return QuarantineReason.BAD_TIMESTAMP, {}
    if not window[0] <= ts <= window[1]:
        return QuarantineReason.TIMESTAMP_OUT_OF_WINDOW, {}
    if event["event_type"] not in EVENT_TYPES:
        return QuarantineReason.UNKNOWN_EVENT_TYPE, {}
    price = event.get("price")
    if price is not None and price < 0:
        return QuarantineReason.NEGATIVE_PRICE, {}
    if price is not None and not math.isfinite(price):
        return QuarantineReason.INVALID_NUMBER, {}
    event["_ts"] = ts
    return "ok", event


def read_raw(root: Path) -> list[RawLine]:
    manifest = json.loads((root / "truth" / "manifest.json").read_text())
    first = dt.datetime.fromisoformat(manifest["first_day"]).replace(tzinfo=dt.UTC)
    last = dt.datetime.fromisoformat(manifest["last_day"]).replace(tzinfo=dt.UTC)
    window = (first - dt.timedelta(days=30), last + dt.timedelta(days=31))
    lines = []
    for path in sorted((root / "raw" / "events").glob("dt=*/part-*")):
        body = path.read_bytes()
        if path.name.endswith(".gz"):
            body = gzip.decompress(body)
        assert body.endswith(b"\n"), path
        for data in body[:-1].split(b"\n"):
            verdict, event = classify(data, window)
            lines.append(RawLine(path.parent.name[3:], data, verdict, event, event.get("_ts")))
    return lines


def _catalog(root: Path, name: str, key: str) -> dict[str, dict[str, Any]]:
    path = root / "raw" / name / f"{name}.jsonl"
    return {row[key]: row for row in map(json.loads, path.read_text().splitlines())}


def clean_events(root: Path) -> list[dict[str, Any]]:
    """What silver keeps: valid lines, bots and unknown items removed, one per event_id."""
    bots = set(json.loads((root / "truth" / "manifest.json").read_text())["bot_user_ids"])
    items = _catalog(root, "items", "item_id")
    seen: dict[str, dict[str, Any]] = {}
    for line in read_raw(root):
        event = line.event
        if line.verdict == "ok" and event["user_id"] not in bots and event["item_id"] in items:
            seen.setdefault(event["event_id"], event)
    return list(seen.values())


def truth(root: Path) -> Any:
    frame = pq.read_table(root / "truth" / "impressions", partitioning="hive").to_pandas()
    frame["dt"] = frame["dt"].astype(str)
    return frame


# --- tests ---

def test_help_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--truth-out" in capsys.readouterr().out


def test_bad_config_names_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert _generate(tmp_path, ["generator.rates.click=1.5"]) == 2
    assert "generator.rates.click" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="page_shares"):
        load_config(GeneratorConfig, overrides=["pages.page_shares.home=0.9"],
                    path=_generator_yaml(tmp_path))


def _generator_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "generator.yaml"
    path.write_text("seed: 1\n")
    return path


def test_every_contract_defect_has_a_rate() -> None:
    expected = {reason.value for reason in QuarantineReason} | {
        outcome.value for outcome in SilverOutcome if outcome != SilverOutcome.BOT_USER
    }
    assert set(LINE_DEFECTS) == expected
    assert expected <= set(DirtConfig.model_fields)


def test_refuses_to_overwrite_without_flag(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _generate(tiny, TINY) == 2
    assert "--overwrite" in capsys.readouterr().err


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_is_byte_identical_whatever_the_processes(tiny: Path, tmp_path: Path) -> None:
    assert _generate(tmp_path, [*TINY, "generator.processes=2"]) == 0
    original, again = _tree(tiny), _tree(tmp_path)
    assert original.keys() == again.keys()
    assert len([name for name in original if name.startswith("raw/events/")]) > 4
    differing = {name for name in original if original[name] != again[name]}
    assert differing == {"truth/generator_config.json"}  # it records processes=1 vs 2
    configs = [json.loads(tree["truth/generator_config.json"]) for tree in (original, again)]
    configs[1]["config"]["processes"] = 1
    assert configs[0] == configs[1]

    other = tmp_path / "other"
    assert _generate(other, [*TINY, "generator.seed=8"]) == 0
    assert _tree(other)["raw/items/items.jsonl"] != original["raw/items/items.jsonl"]


def test_a_shard_with_no_sessions_on_a_day_is_generated(tmp_path: Path) -> None:
    # 41 users in shards of 20: the third shard holds one user, who has no session on
    # some days; the generator must write the other shards' lines, not fail.
    overrides = ["generator.num_users=41", "generator.users_per_shard=20",
                 "generator.num_days=3", "generator.processes=1"]
    assert _generate(tmp_path, overrides) == 0
    assert list((tmp_path / "raw" / "events").rglob("*.jsonl"))


def test_gzip_output_holds_the_same_lines(tiny: Path, tmp_path: Path) -> None:
    assert _generate(tmp_path, [*TINY, "generator.compression=gzip"]) == 0
    plain = [line.data for line in read_raw(tiny)]
    assert [line.data for line in read_raw(tmp_path)] == plain


def test_every_defect_class_is_present_and_matches_the_manifest(tiny: Path) -> None:
    manifest = json.loads((tiny / "truth" / "manifest.json").read_text())
    lines = read_raw(tiny)
    bots = set(manifest["bot_user_ids"])
    items = _catalog(tiny, "items", "item_id")
    observed: Counter[str] = Counter()
    valid_ids: Counter[str] = Counter()
    late_ids = set()
    for line in lines:
        if line.verdict != "ok":
            observed[line.verdict] += 1
            continue
        event = line.event
        valid_ids[event["event_id"]] += 1
        if event["user_id"] in bots:
            observed[SilverOutcome.BOT_USER] += 1
        elif event["item_id"] not in items:
            observed[SilverOutcome.UNKNOWN_ITEM] += 1
        elif str(line.ts.date()) < line.file_dt:  # type: ignore[union-attr]
            late_ids.add(event["event_id"])
    observed[SilverOutcome.DUPLICATE_EVENT] = sum(valid_ids.values()) - len(valid_ids)
    observed[SilverOutcome.LATE_ARRIVAL] = len(late_ids)

    counts = {name: entry["count"] for name, entry in manifest["defects"].items()}
    assert all(count > 0 for count in counts.values()), counts
    assert {name: observed.get(name, 0) for name in counts} == counts
    assert manifest["total_lines"] == len(lines)
    assert sum(manifest["lines_per_dt"].values()) == len(lines)
    stages = {entry["stage"] for entry in manifest["defects"].values()}
    assert stages == {"bronze", "silver"}


def test_default_dirt_is_about_one_percent(medium: Path) -> None:
    manifest = json.loads((medium / "truth" / "manifest.json").read_text())
    dirty = sum(entry["count"] for entry in manifest["defects"].values())
    assert 0.005 < dirty / manifest["total_lines"] < 0.02
    assert manifest["defects"]["line_too_long"]["count"] == 0  # off unless configured


def test_truth_joins_one_to_one_with_clean_impressions(tiny: Path) -> None:
    impressions = {e["event_id"]: e for e in clean_events(tiny) if e["event_type"] == "impression"}
    table = truth(tiny)
    assert table["event_id"].is_unique
    assert set(table["event_id"]) == set(impressions)
    for row in table.itertuples():
        event = impressions[row.event_id]
        assert (event["request_id"], event["user_id"], event["item_id"], event["position"]) == (
            row.request_id, row.user_id, row.item_id, row.position
        )
    assert table[["request_id", "item_id"]].drop_duplicates().shape[0] == len(table)
    probabilities = table[["p_click", "p_add_to_cart_given_click", "p_purchase_given_click"]]
    assert ((probabilities > 0) & (probabilities < 1)).all().all()
    assert (table["p_purchase_given_click"] < table["p_add_to_cart_given_click"]).all()
    assert (table["expected_purchase_value"] >= 0).all()


def test_funnel_events_follow_their_click(tiny: Path) -> None:
    events = sorted(clean_events(tiny), key=lambda e: e["_ts"])
    window = dt.timedelta(hours=24)
    shown = {(e["request_id"], e["item_id"]): e for e in events if e["event_type"] == "impression"}
    clicks: dict[tuple[str, str], list[dt.datetime]] = defaultdict(list)
    carts: dict[tuple[str, str], list[dt.datetime]] = defaultdict(list)
    counts: Counter[str] = Counter()
    for event in events:
        key = (event["user_id"], event["item_id"])
        kind = event["event_type"]
        counts[kind] += 1
        if kind == "click":
            impression = shown[(event["request_id"], event["item_id"])]
            assert impression["user_id"] == event["user_id"]
            assert impression["position"] == event["position"]
            assert impression["_ts"] <= event["_ts"]
            clicks[key].append(event["_ts"])
        elif kind == "add_to_cart":
            assert any(t <= event["_ts"] <= t + window for t in clicks[key]), event
            assert event["price"] > 0
            carts[key].append(event["_ts"])
        elif kind == "purchase":
            assert any(t <= event["_ts"] <= t + window for t in carts[key]), event
            assert event["price"] > 0 and event["quantity"] >= 1
    assert counts["purchase"] > 0


def test_bots_are_separable_by_activity_not_by_id(tiny: Path) -> None:
    manifest = json.loads((tiny / "truth" / "manifest.json").read_text())
    bots = set(manifest["bot_user_ids"])
    users = _catalog(tiny, "users", "user_id")
    assert bots and bots <= set(users)
    per_user_day: Counter[tuple[str, str]] = Counter(
        (line.event["user_id"], str(line.ts.date()))  # type: ignore[union-attr]
        for line in read_raw(tiny) if line.verdict == "ok"
    )
    bot_days = [n for (user, _), n in per_user_day.items() if user in bots]
    human_days = [n for (user, _), n in per_user_day.items() if user not in bots]
    assert bot_days and min(bot_days) > 2 * max(human_days)


def test_cold_start_users_and_items_appear_late(medium: Path) -> None:
    table = truth(medium)
    items = _catalog(medium, "items", "item_id")
    users = _catalog(medium, "users", "user_id")
    first_day = table["dt"].min()
    assert table.loc[table["cold_item"], "dt"].min() > first_day
    assert table.loc[table["cold_user"], "dt"].min() > first_day
    for row in table[table["cold_item"] | table["cold_user"]].itertuples():
        assert items[row.item_id]["created_at"] < _iso(row.ts_ms)
        assert users[row.user_id]["signup_ts"] < _iso(row.ts_ms)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_observed_rates_are_realistic_and_near_target(medium: Path) -> None:
    config = load_config(GeneratorConfig, _config_section(medium))
    users = _catalog(medium, "users", "user_id")
    per_market: dict[str, Counter[str]] = defaultdict(Counter)
    for event in clean_events(medium):
        per_market[users[event["user_id"]]["region"]][event["event_type"]] += 1
    sizes = Counter(user["region"] for user in users.values())
    for market in config.markets:
        counts = per_market[market.name]
        ctr = counts["click"] / counts["impression"]
        cart = counts["add_to_cart"] / counts["click"]
        purchase = counts["purchase"] / counts["click"]
        assert 0.02 <= ctr <= 0.06, (market.name, ctr)
        assert 0.05 <= cart <= 0.15, (market.name, cart)
        assert 0.01 <= purchase <= 0.05, (market.name, purchase)
        assert ctr == pytest.approx(config.rates.click * market.click_scale, rel=0.2)
    ordered = sorted(config.markets, key=lambda market: market.user_share)
    assert [sizes[market.name] for market in ordered] == sorted(sizes.values())


def _config_section(root: Path) -> Path:
    saved = json.loads((root / "truth" / "generator_config.json").read_text())
    path = root / "generator_config.yaml"
    path.write_text(json.dumps(saved["config"]))  # JSON is YAML
    return path


def test_latent_features_approach_the_oracle_and_popularity_does_not(medium: Path) -> None:
    table = truth(medium)
    split = sorted(table["dt"].unique())[-2]
    train, test = table[table["dt"] < split], table[table["dt"] >= split]
    features = ["affinity", "price_fit", "item_quality", "category_trend"]

    def design(frame: Any) -> np.ndarray:
        return np.column_stack([frame[features], np.log(frame["position_bias"]),
                                frame["market"].factorize(sort=True)[0]])

    model = LogisticRegression(max_iter=1000).fit(design(train), train["clicked"])
    latent_auc = roc_auc_score(test["clicked"], model.predict_proba(design(test))[:, 1])
    oracle_auc = roc_auc_score(test["clicked"], test["p_click"])
    item_clicks = train.groupby("item_id")["clicked"].agg(["sum", "count"])
    prior = train["clicked"].mean()
    item_ctr = (item_clicks["sum"] + 20 * prior) / (item_clicks["count"] + 20)
    popularity_auc = roc_auc_score(test["clicked"], test["item_id"].map(item_ctr).fillna(prior))

    def lift(auc: float) -> float:
        return (auc - 0.5) / (oracle_auc - 0.5)

    assert oracle_auc > 0.65
    assert lift(latent_auc) > 0.93, (latent_auc, oracle_auc)
    assert lift(popularity_auc) < 0.75, (popularity_auc, oracle_auc)
