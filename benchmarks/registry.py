"""Every benchmark case, by name: ``"case-name": "module:function"``.

Adding a case is one function ``def my_case(bench: Bench) -> dict`` (see benchmarks/cases.py:
honour ``bench.quick``, return the figures) and one line here. Names are imported only when the
case runs, so a line may name a module not written yet: the suite lists it as unavailable and
``--quick`` skips it, loudly.
"""

from __future__ import annotations

CASES: dict[str, str] = {
    "default-classification": "benchmarks.cases:default_classification",
    "default-qa": "benchmarks.cases:default_qa",
    "phrasebank-dp": "benchmarks.cases:phrasebank_dp",
    "phrasebank-nodp": "benchmarks.cases:phrasebank_nodp",
    "phrasebank-central": "benchmarks.cases:phrasebank_central",
    "phrasebank-warm": "benchmarks.cases:phrasebank_warm",
    "tatqa-dp": "benchmarks.cases:tatqa_dp",
    "tatqa-nodp": "benchmarks.cases:tatqa_nodp",
    "tatqa-warm": "benchmarks.cases:tatqa_warm",
    # Speed and memory, the test tiers (issue 14), data loading (issue 11), the int8 export (issue 15).
    "default-speed": "benchmarks.speed:default_speed",
    "scale-50": "benchmarks.speed:scale_50",
    "scale-5": "benchmarks.speed:scale_5",
    "data-loading": "benchmarks.data_loading:data_loading",
    "int8-export": "benchmarks.int8_export:int8_export",
    "test-tiers": "benchmarks.suite_time:tiers",
}
