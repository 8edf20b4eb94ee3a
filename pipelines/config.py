"""Typed run configuration, validated in full before any work starts.

A YAML file is loaded, `--set a.b=value` overrides are applied, and the result is
validated into the models below. Unknown keys, wrong types and impossible values raise
`ConfigError`, whose message names the key and what is allowed; the CLI turns it into
exit code 2.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(Section):
    paths: list[str] = Field(min_length=1, description="fsspec URLs or globs of JSONL(.gz|.zst) or Parquet files")
    format: Literal["auto", "jsonl", "parquet", "text"] = Field(
        "auto", description="auto (from the file name: Parquet, else JSONL); text: every line, newline included, is a document")
    text_field: str = "text"
    id_field: str | None = Field(None, description="field holding a document id; when absent ids are <file>:<line> or <file>:<row>")
    keep_fields: list[str] = Field(default_factory=list, description="extra input fields carried to the output")
    max_doc_bytes: int = Field(1_000_000, gt=0, description="documents larger than this (UTF-8 bytes) are quarantined")
    task_bytes: int = Field(64 << 20, ge=1 << 16, description="uncompressed JSONL files are split into tasks of about this size")
    part_bytes: int = Field(32 << 20, ge=1 << 10, description="a read task starts a new output part after this many text bytes")
    parquet_rows_per_task: int = Field(100_000, gt=0)


class BeamConfig(Section):
    runner: str | None = Field(None, description="a Beam runner name; null: the in-process portable runner (FnApiRunner) "
                                                 "with engine.workers worker processes")
    options: list[str] = Field(default_factory=list, description="flags passed to Beam's PipelineOptions as given, "
                                                                  "e.g. [--runner=DataflowRunner, --project=p, --region=r]")


class EngineConfig(Section):
    """Where tasks run. Each engine adapter (pipelines/engines) checks the settings it reads."""

    kind: Literal["ray", "local", "beam"] = "ray"
    workers: int = Field(2, ge=1, description="parallel tasks: CPUs of the embedded Ray cluster, Beam's worker processes; "
                                              "with engine.address, the CPUs to keep tasks in flight for (autoscaling)")
    address: str | None = Field(None, description="kind ray: a running cluster (ray://head:10001, or auto inside a job); "
                                                  "null starts an embedded one")
    beam: BeamConfig = BeamConfig()


class NormalizeConfig(Section):
    enabled: bool = True
    fix_encoding: bool = Field(True, description="repair mojibake with ftfy")
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    remove_control: bool = True
    normalize_whitespace: bool = True
    max_blank_lines: int = Field(2, ge=0)


class LangIdConfig(Section):
    enabled: bool = True
    backend: Literal["fasttext", "pycld2"] = "fasttext"
    model_path: str | None = Field(None, description="a fastText-format model file (e.g. GlotLID); default: bundled lid.176.ftz")
    keep: list[str] | None = Field(None, description="language codes to keep; null keeps all")
    threshold: float = Field(0.0, ge=0.0, le=1.0, description="default minimum score")
    thresholds: dict[str, float | Literal["auto"]] = Field(default_factory=dict, description="per-language minimum score, or 'auto'")

    @field_validator("thresholds")
    @classmethod
    def _in_unit_interval(cls, v: dict[str, Any]) -> dict[str, Any]:
        for lang, t in v.items():
            if t != "auto" and not 0.0 <= float(t) <= 1.0:
                raise ValueError(f"threshold for {lang!r} is {t}; allowed: a number in [0, 1] or 'auto'")
        return v


class DedupExactConfig(Section):
    enabled: bool = True
    lowercase: bool = True
    fold_whitespace: bool = True
    strip_punctuation: bool = True
    strip_digits: bool = False


class DedupNearConfig(Section):
    enabled: bool = True
    threshold: float = Field(0.8, gt=0.0, lt=1.0)
    num_perm: int = Field(1024, ge=16, le=8192)
    ngram: int = Field(5, ge=1, le=32)
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    verify: bool = True
    seed: int = 1

    @model_validator(mode="after")
    def _bands_rows(self) -> "DedupNearConfig":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither (then they are derived from threshold and num_perm)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}; "
                             "choose bands and rows whose product is at most num_perm")
        return self


class TokenizerConfig(Section):
    enabled: bool = True
    path: str | None = Field(None, description="an existing tokenizer.json, or a tiktoken ranks file (any name not ending "
                                               "in .json), to use instead of training one")
    pattern: str | None = Field(None, description="split regex of a tiktoken ranks file: gpt2 | llama3 | o200k or a regex")
    special_tokens: dict[str, int] = Field(default_factory=dict,
                                           description="special tokens of a tiktoken ranks file, text -> id")
    train: dict[str, Any] = Field(default_factory=lambda: {"vocab_size": 8192, "preset": "gpt2", "special_tokens": ["<|endoftext|>"]},
                                  description="train-bpe settings (docs/bpe.md): vocab_size, preset, digits, special_tokens, ...")


class StochasTokConfig(Section):
    mode: Literal["off", "expand", "both"] = Field("off", description="off; expand (write only the expanded stream); both streams")
    p: float = Field(0.1, ge=0.0, le=1.0, description="expansion proportion: floor(len * p) attempts per document")
    max_num_to_expand: int | None = Field(None, ge=0)
    seed: int = Field(0, ge=0, description="run seed; each document's stream derives from (seed, id)")


class EncodeConfig(Section):
    enabled: bool = True
    eod: str | int | None = Field("auto", description="token appended to every document: a token, an id, auto, or null")
    bos: str | int | None = Field(None, description="token prepended to every document, or null")
    stochastok: StochasTokConfig = StochasTokConfig()


class ShardsConfig(Section):
    target: int = Field(100_000_000, gt=0, description="shard size, in `unit`")
    unit: Literal["tokens", "bytes"] = "tokens"
    shuffle: bool = Field(False, description="seeded global shuffle of documents across shards")
    seed: int = Field(0, ge=0)


class OutputConfig(Section):
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    documents: bool = Field(True, description="write the cleaned documents as the run's output (the write step)")
    keep_scratch: bool = Field(False, description="keep each finished step's task records and shuffle scratch "
                                                  "(for debugging); by default they are removed after _SUCCESS.json")


class LeaseConfig(Section):
    """One runner per step folder at a time (pipelines/lease.py)."""

    timeout_seconds: float = Field(600.0, gt=0, description="a lease whose heartbeat is older than this is taken over")
    heartbeat_seconds: float = Field(30.0, gt=0, description="how often the holder renews its lease")
    wait: bool = Field(False, description="a second runner waits for the lease instead of exiting (exit 4)")

    @model_validator(mode="after")
    def _renewed_in_time(self) -> "LeaseConfig":
        if self.heartbeat_seconds * 2 > self.timeout_seconds:
            raise ValueError(f"heartbeat_seconds ({self.heartbeat_seconds}) must be at most half of timeout_seconds "
                             f"({self.timeout_seconds}), or a live holder could look stale")
        return self


class RayJobConfig(Section):
    address: str | None = Field(None, description="the Ray cluster's dashboard/job API, e.g. http://tokenmill-head-svc:8265")
    entrypoint_num_cpus: float = Field(0.0, ge=0, description="CPUs reserved for the job's driver (run-step)")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="Ray runtime_env of the job (env_vars, ...)")
    poll_seconds: float = Field(5.0, gt=0)


class AirflowConfig(Section):
    """How the DAG built from this config (dags/) is scheduled; see infra/airflow/README.md."""

    dag_id: str | None = Field(None, description="default: tokenmill_<config file name>")
    schedule: str | None = Field(None, description="a cron expression or preset (@daily); null: triggered by hand or asset")
    asset: str | None = Field(None, description="URI of the raw-data location: an event on this Asset triggers a run")
    start_date: str = "2026-01-01"
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE for the plan task, Jinja-templated by "
                                                                   "Airflow, e.g. run_root=s3://b/runs/{{ ds }}")
    retries: int = Field(3, ge=0)
    retry_delay_seconds: float = Field(60.0, gt=0)
    max_retry_delay_seconds: float = Field(3600.0, gt=0)
    execution_timeout_seconds: float = Field(86400.0, gt=0, description="per step task")
    step_timeouts: dict[str, float] = Field(default_factory=dict, description="per step name, overriding the above")
    pool: str | None = Field(None, description="Airflow pool of the step tasks that use a cluster")
    compute: Literal["worker", "ray_job"] = Field("worker", description="worker: run-step in the Airflow worker (with "
                                                                        "engine.*); ray_job: run-step as a Ray job")
    ray_job: RayJobConfig = RayJobConfig()

    @model_validator(mode="after")
    def _one_trigger(self) -> "AirflowConfig":
        if self.schedule and self.asset:
            raise ValueError("set schedule or asset, not both (a run is triggered by time or by new data)")
        if self.compute == "ray_job" and not self.ray_job.address:
            raise ValueError("compute ray_job needs ray_job.address (the cluster's job API, http://HEAD:8265)")
        return self


class RunConfig(Section):
    run_root: str = Field(description="fsspec URL under which every step writes <step>/<version>/")
    input: InputConfig
    engine: EngineConfig = EngineConfig()
    normalize: NormalizeConfig = NormalizeConfig()
    langid: LangIdConfig = LangIdConfig()
    dedup_exact: DedupExactConfig = DedupExactConfig()
    dedup_near: DedupNearConfig = DedupNearConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    encode: EncodeConfig = EncodeConfig()
    shards: ShardsConfig = ShardsConfig()
    output: OutputConfig = OutputConfig()
    lease: LeaseConfig = LeaseConfig()
    airflow: AirflowConfig = AirflowConfig()
    progress: bool = True
    shuffle_rows_per_bucket: int = Field(500_000, gt=0, description="rows per bucket in dedup shuffles; sets bucket counts from the data, not the worker count")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML scalars/lists."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set dedup_near.threshold=0.85")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key; remove it or check its spelling")
        elif e["type"] == "missing":
            lines.append(f"{loc}: required key is missing")
        elif e["type"] == "literal_error":
            lines.append(f"{loc}: {e['input']!r} is not allowed; {e['msg'].lower()}")
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config file's mapping, on top of its `base:` (a config file it extends, relative to it)."""
    import os

    if os.path.abspath(path) in seen:
        raise ConfigError(f"config file {path!r} extends itself through base: ({' -> '.join(seen)})")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping at the top level")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be the path of a config file, got {base!r}")
    return _merged(_read_yaml(os.path.join(os.path.dirname(path), base), seen + (os.path.abspath(path),)), raw)


def load_raw(path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """The YAML of a config file (on top of its `base:`) with overrides applied (not yet validated)."""
    return apply_overrides(_read_yaml(path), overrides or [])


def load_config(path: str, overrides: list[str] | None = None) -> RunConfig:
    """Load, override and validate a config. Raises ConfigError with a readable message."""
    return parse_config(load_raw(path, overrides))


def parse_config(raw: dict[str, Any]) -> RunConfig:
    """Validate the config's shape and values. Rules that involve a step or an engine are
    checked by them when a plan is made (pipelines.plan.check_config)."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None


def stable_hash(obj: Any, length: int = 20) -> str:
    """A long, stable hash of JSON-serialisable data (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
