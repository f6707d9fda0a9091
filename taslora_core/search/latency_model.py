"""latency-model.json: a latency model fitted for one target, batch size and machine (`taslora latency fit`), and
its use by the search as a predictor (`LatencyModel.predict`).

    {"format": "taslora-latency-model", "version": 1,
     "target": "ort-cpu", "batch": 1, "threads": 1, "statistic": "median" | "min", "host": "<machine>",
     "runtime": {"torch": ..., ...},
     "space": SearchSpace.to_dict(), "space_hash": "<12 hex>",
     "form": "features" | "lookup" | "lookup+features", "ridge": float | null,
     "terms": {"features": {name: ms per unit}, "lookup": {"e64": ms, "e64-h2-r2": ms, ...}},
     "fit": {"samples": N, "rounds": R, "warmup": W, "iters": I, "cv_mape": {ridge: error}, "noise": {...}},
     "heldout": {"n", "mape", "within_10pct", "max_error", "spearman"},   # subnets it was not fitted on
     "flops_proxy": {"heldout": {...}, ...},                             # FLOPs as the proxy, same subnets
     "measurements": [{"subnet": ..., "latency_ms": ..., "rounds_ms": [...], "role": "fit" | "heldout"}],
     "created": "<UTC time>", "sha256": "<of the document without this key>"}

`read_latency_model` refuses (one-line `LatencyModelError`, a SearchError: the CLI exits 2) a missing, damaged,
foreign or edited file; `check_for_search` refuses a model of another space, target or batch size.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taslora_core.artifact_read import ArtifactError, format_problem, read_json_artifact
from taslora_core.atomic import atomic_write_json
from taslora_core.search.config import SearchError
from taslora_core.search.latency_fit import FittedTerms
from taslora_core.space import SearchSpace, SpaceError
from taslora_core.subnet import Subnet

MODEL_FORMAT = "taslora-latency-model"
MODEL_VERSION = 1
MODEL_JSON = "latency-model.json"
REFIT = "refit it with `taslora latency fit`"


class LatencyModelError(SearchError):
    """A latency-model.json that cannot be used (missing, damaged, edited, or for another space/target/batch)."""


def space_hash(space: SearchSpace) -> str:
    """12 hex digits naming a search space (its whole definition): latency caches and models are per space."""
    return hashlib.sha256(json.dumps(space.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]


def host_name() -> str:
    """This machine's name as file names use it (letters, digits, - _ .)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in platform.node() or "host")


def measurement_stem(target: str, batch: int, statistic: str, space: SearchSpace) -> str:
    """THE name of what one kind of latency measurement holds, for its cache file and its model folder:
    `<target>-b<batch>[-<statistic>]-<host>-<space hash>` (the default statistic, median, is not named)."""
    stat = "" if statistic == "median" else f"-{statistic}"
    return f"{target}-b{int(batch)}{stat}-{host_name()}-{space_hash(space)}"


def _sha256(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


TRUSTED_SHARE = 0.90
"""Held-out share within +-10% below which a fit and a search on its model warn (`LatencyModel.quality_warning`)."""


@dataclass
class LatencyModel:
    """A fitted latency model: `predict(subnet)` in ms for one batch of `batch` images on `target`."""

    target: str
    batch: int
    space: SearchSpace
    terms: FittedTerms
    threads: int | None = 1
    statistic: str = "median"
    """What each measurement kept of its timed runs (the verification measures the same way)."""
    host: str = ""
    runtime: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    """Everything else the file records (fit, heldout, flops_proxy, measurements, created)."""
    path: Path | None = None
    sha256: str | None = None
    """The document's sha256 as read (None for a model built in memory)."""

    def predict(self, subnet: Subnet) -> float:
        """Predicted latency (ms) of `subnet` (a subnet of `space`)."""
        return self.terms.predict(self.space, subnet)

    __call__ = predict

    @property
    def heldout(self) -> dict[str, Any]:
        """The held-out accuracy recorded when it was fitted (empty when none was measured)."""
        return dict(self.info.get("heldout") or {})

    def quality(self) -> dict[str, Any]:
        """How far the model can be trusted, as fitted: the held-out share within +-10%, the measurements'
        round-to-round noise (p50, p90 of (max - min) / median per subnet) and :meth:`quality_warning`."""
        noise = dict((self.info.get("fit") or {}).get("noise") or {})
        return {"heldout_within_10pct": self.heldout.get("within_10pct"),
                "noise_p50": noise.get("round_spread_median"), "noise_p90": noise.get("round_spread_p90"),
                "warning": self.quality_warning()}

    def quality_warning(self) -> str | None:
        """One line when fewer than :data:`TRUSTED_SHARE` of the held-out subnets were predicted within +-10%,
        naming what to change; None otherwise (or when nothing was held out)."""
        share = self.heldout.get("within_10pct")
        if share is None or float(share) >= TRUSTED_SHARE:
            return None
        noise = dict((self.info.get("fit") or {}).get("noise") or {})
        p50, p90 = noise.get("round_spread_median"), noise.get("round_spread_p90")
        measured = "" if p50 is None else f"; round-to-round noise p50 {100 * p50:.0f}% / p90 {100 * p90:.0f}%"
        change = ["more passes (--rounds 5)", "a quieter machine"]
        return (f"latency model unreliable: {100 * float(share):.0f}% of held-out subnets within +-10% (below "
                f"{100 * TRUSTED_SHARE:.0f}%){measured}; refit (`taslora latency fit`) with {', '.join(change)}")

    def to_dict(self) -> dict[str, Any]:
        """The latency-model.json document (with its sha256)."""
        doc: dict[str, Any] = {
            "format": MODEL_FORMAT, "version": MODEL_VERSION, "target": self.target, "batch": self.batch,
            "threads": self.threads, "statistic": self.statistic, "host": self.host, "runtime": dict(self.runtime), "space": self.space.to_dict(),
            "space_hash": space_hash(self.space), "form": self.terms.form, "ridge": self.terms.ridge,
            "terms": {"features": dict(self.terms.features), "lookup": dict(self.terms.lookup)}, **self.info,
        }
        doc["sha256"] = _sha256(doc)
        return doc

    def describe(self) -> str:
        """'ort-cpu, batch 1, 1 thread(s), median, fitted on <host> (lookup+features; held-out MAPE 3.1%, 97%
        within +-10%, Spearman 0.98)'."""
        h = self.heldout
        score = (f"; held-out MAPE {100 * h['mape']:.1f}%, {100 * h['within_10pct']:.0f}% within +-10%, Spearman "
                 f"{h['spearman']:.3f}" if h.get("n") and h.get("spearman") is not None else "")
        return (f"{self.target}, batch {self.batch}, {self.threads} thread(s), {self.statistic}, fitted on "
                f"{self.host or '?'} ({self.terms.form}{score})")


INFO_KEYS = ("fit", "quality", "heldout", "flops_proxy", "forms", "cliffs", "measurements", "created")
REQUIRED = ("format", "version", "target", "batch", "threads", "space", "ridge", "terms", "sha256")


def write_latency_model(path: str | Path, model: LatencyModel) -> Path:
    """Write `model` as JSON (atomically; a folder gets latency-model.json inside); returns the file's path."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / MODEL_JSON
    return atomic_write_json(path, model.to_dict())


def read_latency_model(path: str | Path) -> LatencyModel:
    """Read and check a latency model (a file, or a folder holding latency-model.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_JSON

    def bad(problem: str) -> LatencyModelError:
        return LatencyModelError(f"latency model {path} {problem}; {REFIT}")

    try:
        doc = read_json_artifact(path, "latency model", REFIT)
    except ArtifactError as err:
        raise LatencyModelError(str(err)) from None
    problem = format_problem(doc, "latency model", MODEL_FORMAT, MODEL_VERSION, REQUIRED)
    if problem:
        raise bad(problem)
    if doc["sha256"] != _sha256(doc):
        raise bad("was modified since it was written (its sha256 does not match)")
    try:
        space = SearchSpace.from_dict(doc["space"])
        terms = FittedTerms(features={str(k): float(v) for k, v in doc["terms"]["features"].items()},
                            lookup={str(k): float(v) for k, v in doc["terms"].get("lookup", {}).items()},
                            ridge=None if doc["ridge"] is None else float(doc["ridge"]))
        model = LatencyModel(target=str(doc["target"]), batch=int(doc["batch"]), space=space, terms=terms,
                             threads=None if doc["threads"] is None else int(doc["threads"]),
                             statistic=str(doc.get("statistic", "median")),
                             host=str(doc.get("host", "")), runtime=dict(doc.get("runtime") or {}),
                             info={k: doc[k] for k in INFO_KEYS if k in doc}, path=path, sha256=doc["sha256"])
    except (SpaceError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise bad(f"is malformed ({type(err).__name__}: {' '.join(str(err).split())[:120]})") from None
    from taslora_core.search.latency_features import FEATURES

    if sorted(terms.features) != sorted(FEATURES):
        raise bad(f"has features {sorted(terms.features)}, not this taslora's {list(FEATURES)}")
    return model


def check_for_search(model: LatencyModel, space: SearchSpace, target: str | None, batch: int | None,
                     statistic: str | None = None) -> None:
    """Refuse a model fitted for another search space, target, batch size or statistic than the search's."""
    where = model.path or "the latency model"
    if model.space != space:
        raise LatencyModelError(f"{where} was fitted on search space '{model.space.name}', not on '{space.name}' of "
                                f"this checkpoint; fit one for it: taslora latency fit --space <the checkpoint's space>")
    if target is not None and target != model.target:
        raise LatencyModelError(f"{where} was fitted for target {model.target}, not --target {target}; drop --target "
                                f"or fit one: taslora latency fit --target {target}")
    if batch is not None and int(batch) != model.batch:
        raise LatencyModelError(f"{where} was fitted at batch {model.batch}, not --latency-batch {batch} (latency is "
                                f"per batch size); fit one: taslora latency fit --target {model.target} --batch {batch}")
    if statistic is not None and statistic != model.statistic:
        raise LatencyModelError(f"{where} predicts the {model.statistic} latency, not --latency-statistic {statistic}; "
                                f"drop it or fit one: taslora latency fit --statistic {statistic}")
