import json

import pyarrow as pa
import pytest
from conftest import ROOT

from lcdata import schema as S


def test_schemas_dir_in_sync():
    for name in S.SCHEMAS:
        on_disk = json.loads((ROOT / "schemas" / f"{name}.json").read_text())
        assert on_disk == S.schema_json(name), f"schemas/{name}.json drifted: run `lcdata schema export`"
    assert sorted(p.stem for p in (ROOT / "schemas").glob("*.json")) == sorted(S.SCHEMAS)


def test_every_schema_is_stamped():
    for name, s in S.SCHEMAS.items():
        assert s.metadata[b"lcdata.schema_version"] == S.SCHEMA_VERSION.encode()
        assert s.metadata[b"lcdata.record"] == name.encode()


def test_packed_columns_are_the_ones_transformers_expects():
    assert S.PACKED_SCHEMA.names == ["input_ids", "labels", "position_ids", "seq_lens", "sample_ids"]
    for c in ("input_ids", "labels", "position_ids", "seq_lens"):
        assert S.PACKED_SCHEMA.field(c).type == pa.list_(pa.int32())


def test_version_mismatch_is_refused():
    old = S.PACKED_SCHEMA.with_metadata({b"lcdata.schema_version": b"0.1"})
    with pytest.raises(S.SchemaVersionError, match="shard-00000.arrow: schema version 0.1"):
        S.check_version(old, "shard-00000.arrow")


def test_sample_round_trips_through_arrow():
    s = S.Sample(
        id="x", task="needles", messages=[{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c"}],
        question="", answer="c", split="long", purpose="train", context_id="ctx", context_message=0, context_offset=0, context_chars=2,
        context_tokens=1, sources=[S.Part("d", 0, 2, 5, 7)], evidence=[S.Evidence("b", 1, 2, 0.5)], meta={"k": [1]},
    )
    t = pa.Table.from_pylist([s.to_row()], schema=S.SAMPLE_SCHEMA)
    assert S.Sample.from_row(t.to_pylist()[0]) == s
