"""The zero-overhead certificate: the one-sided rule and its three verdicts, the sequential latency test on a fake
clock (deterministic; a 20 us model included), the certificate document (verdict, reasons as data, digest, tamper
check), the probe, ONNX metadata, runtimes. The rule's error rates are proven in tests/test_certificate_rule.py."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_vit import TinyViT
from taslora_core.artifact_read import ArtifactError
from taslora_deploy.certificate.document import (CERTIFIED, FAILED, LATENCY_INCONCLUSIVE, LATENCY_NOT_MEASURED,
                                                 Tolerance, build_certificate, metadata_props, overall_verdict,
                                                 parity_record, probe_inputs, read_certificate, reason_lines,
                                                 write_certificate)
from taslora_deploy.certificate.equivalence import (DIFFERENT, EQUIVALENT, INCONCLUSIVE, LatencyRule,
                                                    bootstrap_ratio_ci, combine_verdicts, describe_pairs, judge_look,
                                                    median_ratio_interval)
from taslora_deploy.certificate.latency import (EXPORT_TEST, LatencyTestConfig, equivalence_test,
                                                latency_certificate, plan_pairs)

SHAPE = (3, 16, 16)


# --------------------------------------------------------------------------- the rule


def test_rule_is_one_sided_and_the_three_verdicts():
    rule = LatencyRule(margin=0.02)
    assert rule.limit == pytest.approx(1.02) and rule.faster_limit == pytest.approx(1 / 1.02)
    assert rule.classify(0.99, 1.01) == EQUIVALENT
    assert rule.classify(1.005, 1.015) == EQUIVALENT  # excludes 1, yet inside the margin: not a slowdown we care about
    assert rule.classify(1.03, 1.06) == DIFFERENT  # entirely above 1 + margin: slower
    assert rule.classify(0.93, 0.97) == EQUIVALENT  # faster is not overhead: passes
    assert rule.classify(1.0, 1.03) == INCONCLUSIVE  # straddles the limit
    assert rule.classify(0.0, math.inf) == INCONCLUSIVE
    assert LatencyRule(margin=0.05).classify(1.03, 1.04) == EQUIVALENT  # the margin is an option
    with pytest.raises(ValueError, match="margin"):
        LatencyRule(margin=0.0)
    with pytest.raises(ValueError, match="alpha"):
        LatencyRule(alpha=0.6)
    assert combine_verdicts([EQUIVALENT, EQUIVALENT]) == EQUIVALENT
    assert combine_verdicts([EQUIVALENT, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine_verdicts([INCONCLUSIVE, DIFFERENT, EQUIVALENT]) == DIFFERENT
    assert combine_verdicts([]) == INCONCLUSIVE


def _binom_cdf(k: int, n: int) -> float:
    return sum(math.comb(n, j) for j in range(k + 1)) / 2 ** n


@pytest.mark.parametrize("n", [10, 57, 100, 1000])
def test_median_ratio_interval_is_the_order_statistic_interval(n: int):
    rng = np.random.default_rng(n)
    ta = np.exp(rng.normal(0, 0.3, n))
    tb = ta * np.exp(rng.normal(0.01, 0.05, n))
    d = np.sort(np.log(tb / ta))
    lo, hi = median_ratio_interval(d, 0.90)
    k = 1 + int(np.searchsorted(d, np.log(lo)))  # the rank of the lower bound
    assert lo == pytest.approx(np.exp(d[k - 1])) and hi == pytest.approx(np.exp(d[n - k]))  # symmetric ranks
    assert _binom_cdf(k - 1, n) <= 0.05 < _binom_cdf(k, n)  # the widest-coverage-guaranteeing rank, not a narrower one
    assert median_ratio_interval(d[:3], 0.90) == (0.0, math.inf)  # 3 pairs cannot give a 90% interval


def test_bootstrap_resamples_whole_pairs():
    """B is exactly 3% slower than A in every pair while both swing by 10x: resampling pairs keeps the ratio of
    medians at 1.03 in every resample (resampling A and B apart would give a wide interval)."""
    rng = np.random.default_rng(0)
    ta = np.exp(rng.normal(0, 1.0, 400))
    lo, hi = bootstrap_ratio_ci(ta, ta * 1.03, q=50.0, resamples=300, seed=1)
    assert lo == pytest.approx(1.03) and hi == pytest.approx(1.03)
    lo90, hi90 = bootstrap_ratio_ci(ta, ta * 1.03, q=90.0, resamples=300, seed=1)
    assert lo90 == pytest.approx(1.03) and hi90 == pytest.approx(1.03)


def test_describe_pairs_is_one_summary_with_the_faster_flag():
    rng = np.random.default_rng(0)
    ta = np.exp(rng.normal(-7, 0.05, 300))
    tb = ta * np.exp(rng.normal(np.log(0.95), 0.01, 300))
    res = describe_pairs(ta, tb, LatencyRule(0.02), 200)
    assert res["faster"] and res["ratio_ci"][1] < 1 / 1.02 and res["ratio"] == res["ratio_median"]
    for key in ("ratio_of_medians", "ratio_of_medians_ci", "ratio_of_p90s", "ratio_of_p90s_ci", "p90_verdict"):
        assert key in res
    assert res["ratio_of_medians"] == pytest.approx(np.median(tb) / np.median(ta))  # not overwritten by a bootstrap
    assert "ratio_of_medians_ci" not in describe_pairs(ta, ta, LatencyRule(), resamples=0)


def test_a_passing_regime_is_not_a_verdict():
    """B looks 10% faster during the first 70% of the pairs (another process slowed A for a while), then 5% slower:
    the bound of all pairs clears the limit, but the second half disagrees, so the look is not a verdict; a
    steady 10% slowdown is, once the pairs span the time a verdict must persist."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.005, 2000)
    rule = LatencyRule(0.02)
    regime = np.log(np.r_[np.full(1400, 0.9), np.full(600, 1.05)]) + noise
    res = judge_look(regime, rule, 0.05, 0.05, span_s=2.0, min_span_s=1.0)
    assert res["upper"] < 1.0 and res["verdict"] == INCONCLUSIVE and "second half" in res["unconfirmed"]
    steady = np.log(1.1) + noise
    assert judge_look(steady, rule, 0.05, 0.05, 2.0, 1.0)["verdict"] == DIFFERENT
    short = judge_look(steady, rule, 0.05, 0.05, span_s=0.4, min_span_s=1.0)
    assert short["verdict"] == INCONCLUSIVE and "less than the 1 s" in short["unconfirmed"]


# --------------------------------------------------------------------------- the sequential test on a fake clock


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    return now


def _noisy(clock: list[float], cost_s: float, sd: float, seed: int, gpu: list[float] | None = None,
           gpu_cost_s: float | None = None):
    """A runner costing cost_s * exp(N(0, sd)) of the fake clock per call (seeded: deterministic)."""
    rng = np.random.default_rng(seed)
    factors = iter(np.exp(rng.normal(0.0, sd, 1 << 18)).tolist())

    def run():
        clock[0] += cost_s * float(next(factors))
        if gpu is not None:
            gpu[0] += gpu_cost_s
    run.stream = f"stream-{seed}"
    return run


FAST = LatencyTestConfig(batch_sizes=(1,), warmup_s=0.01, first_pairs=100, time_limit_s=2.0, resamples=200,
                         session_sd=0.0)
"""The fake clock's runners have no session spread, so these tests of the looks and the persistence leave the
session term out (tests/test_certificate_rule.py covers it)."""


def test_identical_models_are_equivalent_once_the_evidence_persists(clock):
    res = equivalence_test(_noisy(clock, 1e-3, 0.02, 1), _noisy(clock, 1e-3, 0.02, 2), FAST)
    assert res["verdict"] == EQUIVALENT and res["stopped"] == "decided" and res["direction"] is None
    lo, hi = res["ratio_ci"]
    assert 1 / 1.02 <= lo <= 1.0 <= hi <= 1.02
    # ~2 ms per pair: 950 pairs planned in 95% of 2 s, looks at 118, 237, 475, 950; the upper bound is below 1.02
    # from the first look, but a verdict waits until the pairs span 0.8 s (40% of the 2 s limit: 400 pairs)
    assert res["inner"] == 1 and 940 <= res["schedule"]["planned_pairs"] <= 950
    assert [lk["pairs"] for lk in res["looks"]] == [lk["pairs"] for lk in res["schedule"]["looks"]][:3]
    assert all("less than the 0.8 s" in lk["unconfirmed"] for lk in res["looks"][:2])
    d = res["decision"]
    assert d["bound"] == "upper" and d["look"] == 3 and d["value"] < 1.02 and d["alpha"] < 0.006
    assert "upper bound" in verdict_text(res) and "at look 3/4" in verdict_text(res)


def verdict_text(res: dict) -> str:
    from taslora_deploy.certificate.latency import verdict_line

    return verdict_line(res)


def test_a_five_percent_slowdown_is_different(clock):
    res = equivalence_test(_noisy(clock, 1e-3, 0.02, 1), _noisy(clock, 1.05e-3, 0.02, 2), FAST)
    assert res["verdict"] == DIFFERENT and res["direction"] == "slower" and res["decision"]["value"] > 1.02
    assert res["ratio"] == pytest.approx(1.05, abs=0.01) and res["median_b_ms"] > res["median_a_ms"]
    # the lower bound cleared the limit from the first look, but a difference must persist for 0.8 s of pairs
    assert "less than the 0.8 s" in res["looks"][0]["unconfirmed"] and res["looks"][0]["verdict"] == INCONCLUSIVE
    assert res["looks"][-1]["verdict"] == DIFFERENT and res["pairs"] >= 400  # ~2 ms per pair: 500 pairs per second


def test_a_faster_model_passes_with_a_note(clock):
    """5% faster, measured precisely: the two-sided interval lies below 1/(1 + margin), which TOST called
    different and failed; one-sided, it is certified, with the note that faster is not overhead."""
    res = equivalence_test(_noisy(clock, 1e-3, 0.01, 1), _noisy(clock, 0.95e-3, 0.01, 2), FAST)
    assert res["ratio_ci"][1] < 1 / 1.02 and res["verdict"] == EQUIVALENT and res["direction"] == "faster"
    assert "faster is not overhead" in res["note"] and "faster (not overhead)" in verdict_text(res)


def test_a_slowdown_inside_the_margin_is_not_different(clock):
    """1% slower, measured precisely: the interval excludes 1 but its upper bound is below 1.02, so equivalent
    (a rule that failed everything with an interval above 1 would call this different)."""
    res = equivalence_test(_noisy(clock, 1e-3, 0.002, 1), _noisy(clock, 1.01e-3, 0.002, 2), FAST)
    assert res["ratio_ci"][0] > 1.0 and res["verdict"] == EQUIVALENT


def test_a_noisy_machine_is_inconclusive_at_the_time_limit(clock):
    config = LatencyTestConfig(batch_sizes=(1,), warmup_s=0.01, first_pairs=20, time_limit_s=0.5, resamples=200)
    res = equivalence_test(_noisy(clock, 1e-3, 0.6, 1), _noisy(clock, 1e-3, 0.6, 2), config)
    assert res["verdict"] == INCONCLUSIVE and res["stopped"] in ("time limit", "planned pairs")
    assert res["decision"]["bound"] is None and "no bound cleared 1.02" in verdict_text(res)
    assert res["looks"][-1]["final"] and sum(lk["alpha"] for lk in res["looks"]) == pytest.approx(0.05)
    assert res["seconds"] <= 0.5 + 16 * 2 * 3e-3  # at most one chunk of 16 pairs past the limit


def test_a_20_microsecond_model_gets_a_verdict_in_the_exports_time(clock):
    """At 20 us per call, 3 s of single-call pairs held 75000 pairs but only 0.3 s of timed evidence in 4000 of
    them: never a verdict. Samples of 10 calls (autorange: >= 0.2 ms) make each pair 0.4 ms of evidence."""
    config = EXPORT_TEST.with_options(batch_sizes=(1,), resamples=50)
    res = equivalence_test(_noisy(clock, 20e-6, 0.02, 1), _noisy(clock, 20e-6, 0.02, 2), config)
    assert res["inner"] in (10, 20) and res["sample_ms"] >= 0.2  # 10 calls of ~20 us: ~0.2 ms
    assert res["verdict"] == EQUIVALENT and res["stopped"] == "decided" and res["seconds"] <= config.time_limit_s
    assert res["span_s"] >= config.span_needed_s and res["pairs"] <= config.max_pairs
    slow = equivalence_test(_noisy(clock, 20e-6, 0.02, 3), _noisy(clock, 21e-6, 0.02, 4), config)
    assert slow["verdict"] == DIFFERENT  # and a 5% slowdown of it is caught


def test_the_plan_raises_inner_when_max_pairs_could_not_span_the_evidence():
    config = LatencyTestConfig(max_pairs=1000, time_limit_s=3.0)
    plan = plan_pairs(config, 1, 4e-4)  # 500 pairs of 0.4 ms = 0.2 s < the 1 s a verdict needs
    assert plan.inner == 5 and plan.pair_s == pytest.approx(2e-3) and plan.schedule.planned_pairs == 1000
    assert plan_pairs(config, 2, 4e-3).inner == 2  # 500 pairs of 4 ms span 2 s: nothing to raise
    # CUDA events: the span is counted on the GPU's clock (2 ms a pair), the time limit on the host's
    assert plan_pairs(config, 1, 1e-5, span_per_pair_s=2e-3).inner == 1
    assert plan_pairs(config, 1, 0.5).schedule.looks == (5,)  # a 0.25 s model: 5 pairs in 95% of 3 s, one look


def test_order_is_randomised_and_balanced(clock):
    calls: list[str] = []

    def tag(name: str):
        def run():
            calls.append(name)
            clock[0] += 1e-3
        return run

    config = LatencyTestConfig(batch_sizes=(1,), warmup_s=0.0, first_pairs=64, time_limit_s=1.0, resamples=50)
    equivalence_test(tag("a"), tag("b"), config)
    # after one warm-up round (a, b), the autorange's samples (a, b; both again to keep the slower's) and four probe
    # pairs
    firsts = calls[2 + 4 + 8::2][:64]  # the first call of each timed pair
    assert firsts.count("a") == firsts.count("b") == 32  # balanced
    assert firsts not in (["a", "b"] * 32, ["b", "a"] * 32)  # but not a fixed alternation


def test_cuda_events_decide_on_gpu_time(clock):
    """Host time of B is 10% higher (launch overhead) but its GPU time is equal: the events decide."""
    from test_timing import _FakeEvent

    gpu, streams = [0.0], []
    a = _noisy(clock, 1.0e-3, 0.01, 1, gpu, 1e-3)
    b = _noisy(clock, 1.1e-3, 0.01, 2, gpu, 1e-3)
    res = equivalence_test(a, b, FAST, events=True, make_event=lambda: _FakeEvent(gpu, streams))
    assert res["clock"] == "cuda-events" and res["verdict"] == EQUIVALENT
    assert res["host"]["ratio_of_medians"] == pytest.approx(1.1, abs=0.02)
    assert {"stream-1", "stream-2"} == set(streams)


def test_latency_certificate_combines_batches_and_records_the_environment(clock):
    def make_pair(batch: int):
        slower = 1.05 if batch == 8 else 1.0
        return _noisy(clock, 1e-3, 0.01, 1), _noisy(clock, slower * 1e-3, 0.01, 2)

    config = LatencyTestConfig(batch_sizes=(1, 8), warmup_s=0.0, first_pairs=100, time_limit_s=1.0, resamples=100)
    lines: list[str] = []
    lat = latency_certificate(make_pair, config, "ort-cpu", threads=1, log=lines.append)
    assert lat["batches"]["1"]["verdict"] == EQUIVALENT and lat["batches"]["8"]["verdict"] == DIFFERENT
    assert lat["verdict"] == DIFFERENT and lat["margin"] == 0.02 and lat["batch_sizes"] == (1, 8)
    assert lat["alpha"] == lat["fail_alpha"] == 0.05 and "non-inferiority" in lat["rule"]
    assert "O'Brien-Fleming" in lat["batches"]["1"]["schedule"]["spending"]
    env = lat["environment"]
    for key in ("cpu_model", "onnxruntime", "torch", "threads", "load_average_before", "load_average_after"):
        assert key in env
    assert len(lines) == 2 and "(ort-cpu, batch 8): different" in lines[1]


# --------------------------------------------------------------------------- the certificate document


def _structure(identical: bool = True) -> dict:
    return {"identical": identical, "differences": [] if identical else ["op MatMul: 13 in folded vs 12 in no-LoRA"],
            "artifact": {"digest": "ab" * 32}, "baseline": {"digest": "ab" * 32}}


def _parity(ok: bool = True) -> dict:
    ref = {"real": np.eye(3), "probe": np.ones((2, 3))}
    got = {"real": np.eye(3) + (0.0 if ok else 0.5), "probe": np.ones((2, 3))}
    return parity_record(got, ref, Tolerance("max_abs_diff", 1e-4), {"seed": 0, "batch": 2, "shape": [3]})


def _latency(verdict: str) -> dict:
    return {"verdict": verdict, "batches": {"8": {"verdict": verdict, "ratio": 1.05, "direction": "slower"}}}


@pytest.mark.parametrize("structure,parity,latency,want", [
    (True, True, EQUIVALENT, CERTIFIED),
    (True, True, INCONCLUSIVE, LATENCY_INCONCLUSIVE),
    (True, True, None, LATENCY_NOT_MEASURED),
    (True, True, DIFFERENT, FAILED),
    (False, True, EQUIVALENT, FAILED),
    (True, False, EQUIVALENT, FAILED),
])
def test_overall_verdict(structure, parity, latency, want):
    verdict, reasons = overall_verdict(_structure(structure), _parity(parity), None if latency is None else _latency(latency))
    assert verdict == want
    assert bool(reasons) == (want == FAILED)
    kinds = [r["kind"] for r in reasons]
    assert kinds == [k for k, bad in (("structure", not structure), ("parity", not parity),
                                      ("latency", latency == DIFFERENT)) if bad]
    if latency == DIFFERENT:
        assert "slower than the no-LoRA subnet" in reasons[0]["detail"] and "slower by 5.0%" in reasons[0]["detail"]
        assert reason_lines(reasons) == [f"latency: {reasons[0]['detail']}"]


def test_parity_decides_on_real_images_and_keeps_the_probe():
    rec = parity_record({"real": np.zeros((2, 3)), "probe": np.full((1, 3), 9.0)},
                        {"real": np.zeros((2, 3)) + 1e-6, "probe": np.zeros((1, 3))}, Tolerance("max_abs_diff", 1e-4),
                        {"seed": 1, "batch": 1, "shape": [3]})
    assert rec["ok"] and rec["decided_on"] == ["real"] and rec["inputs"]["probe"]["max_abs_diff"] == 9.0
    assert rec["probe"]["reference_logits"] == [[0.0, 0.0, 0.0]]
    rel = parity_record({"probe": np.array([[1.0, 2.1]])}, {"probe": np.array([[1.0, 2.0]])},
                        Tolerance("max_rel_diff", 0.04))
    assert rel["max_rel_diff"] == pytest.approx(0.05) and not rel["ok"]


def test_certificate_digest_catches_an_edit(tmp_path: Path):
    doc = build_certificate(file="certificate.json", artifact="model.onnx", baseline="baseline/model.onnx",
                            precision="fp32", model={"subnet": {"depth": 2}, "params": 10}, structure=_structure(),
                            parity=_parity(), latency=_latency(EQUIVALENT))
    assert doc["verdict"] == CERTIFIED and len(doc["digest"]) == 64
    path = write_certificate(tmp_path / "certificate.json", doc)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert read_certificate(path) == doc
    edited = {**doc, "verdict": FAILED}
    path.write_text(json.dumps(edited))
    with pytest.raises(ArtifactError, match="was edited"):
        read_certificate(path)
    props = metadata_props(doc)
    assert props["taslora.certificate.digest"] == doc["digest"] and props["taslora.certificate.verdict"] == CERTIFIED
    assert json.loads(props["taslora.subnet"]) == {"depth": 2} and props["taslora.precision"] == "fp32"


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_probe_inputs_are_a_fixed_formula():
    x = probe_inputs(0, 2, (1, 4, 4))
    assert x.dtype == np.float32 and x.shape == (2, 1, 4, 4)
    assert np.array_equal(x, probe_inputs(0, 2, (1, 4, 4))) and not np.array_equal(x, probe_inputs(1, 2, (1, 4, 4)))
    # pinned values: the probe must be the same on every machine and numpy version the certificate is checked on
    assert x.reshape(-1)[:3].tolist() == pytest.approx([-1.73204, 0.40889, -0.91428], abs=1e-4)
    big = probe_inputs(3, 4, (3, 32, 32))
    assert abs(float(big.mean())) < 0.05 and abs(float(big.std()) - 1.0) < 0.05


# --------------------------------------------------------------------------- ONNX metadata and runtimes


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    from taslora_deploy.onnx_export import export_onnx

    torch.manual_seed(0)
    return export_onnx(TinyViT().eval(), tmp_path_factory.mktemp("cert") / "m.onnx", input_shape=SHAPE)


def test_stamp_metadata_replaces_ours_keeps_others_and_leaves_the_graph(tiny_onnx: Path, tmp_path: Path):
    import onnx

    from taslora_deploy.onnx_export import stamp_metadata
    from taslora_deploy.onnx_graph import onnx_metadata, op_histogram
    from taslora_deploy.ort_parity import ort_session

    path = tmp_path / "m.onnx"
    model = onnx.load(str(tiny_onnx))
    entry = model.metadata_props.add()
    entry.key, entry.value = "owner", "someone"
    onnx.save(model, str(path))
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)
    before = ort_session(path).run(None, {"images": x})[0]
    stamp_metadata(path, {"taslora.a": "1", "taslora.b": "2"})
    stamp_metadata(path, {"taslora.a": "3"})
    assert onnx_metadata(path) == {"owner": "someone", "taslora.a": "3"}
    assert op_histogram(path) == op_histogram(tiny_onnx)
    assert np.array_equal(ort_session(path).run(None, {"images": x})[0], before)


class _FakeEngine:
    """Stands in for a TrtRunner: a device, an input dtype, a stream, and a call that doubles its input."""

    device, input_dtype, stream = torch.device("cpu"), torch.float32, "trt-stream"

    def __init__(self, plan=None):
        self.plan, self.calls = plan, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 2 * x


def test_runtime_runners(tiny_onnx: Path, monkeypatch):
    from taslora_deploy import trt_engine
    from taslora_deploy.runners import runtime_device, runtime_runner

    assert runtime_runner("ort-cpu", tiny_onnx, 2, threads=1)()[0].shape == (2, 10)
    assert tuple(runtime_runner("torch-cpu", TinyViT(), 3, SHAPE)().shape) == (3, 10)
    engine = _FakeEngine()
    run = runtime_runner("trt", engine, 4, SHAPE)
    assert tuple(run().shape) == (4, *SHAPE) and engine.calls == 1 and run.stream == "trt-stream"
    monkeypatch.setattr(trt_engine, "TrtRunner", _FakeEngine)  # a plan path opens the engine through TrtRunner
    assert tuple(runtime_runner("trt", "x.plan", 1, SHAPE)().shape) == (1, *SHAPE)
    assert runtime_device("trt-graph") == runtime_device("torch-cuda") == "cuda" and runtime_device("ort-cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown runtime"):
        runtime_runner("tvm", tiny_onnx, 1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            runtime_runner("torch-cuda-graph", TinyViT(), 1, SHAPE)
