"""Filters: stages that answer keep/drop + reason (the base class counts and writes rejects).

Per context: coherence (``coherence.py``). Per sample: evidence distance, decontamination
(``evidence.py``, ``decontam.py``), LLM judge and long-dependency verification
(``verify.py``). Across the whole build, before packing: near-duplicate questions and depth
rebalancing (``dedup.py``, ``evidence.py``); near-duplicate documents before assembly."""
