"""The plan: which steps run, in what order, reading whose output, on which pinned files.

Document steps form a chain; a disabled step is left out and its successor reads from the
step before it; the accounting step comes last. `build_steps` needs only the config (the
Airflow DAG takes its shape from it at parse time, without touching the data).

Making a plan lists the inputs once, fingerprints them and every file a step depends on,
computes each step's version and URL, and (with `write_plan`) stores all of it as
`<run_root>/_plans/<plan-hash>.json`. Every later process (a `run-step`, an Airflow task,
a Ray job) loads that file instead of re-resolving, so all of a run agrees on one input
list and one set of versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata

from pipelines.config import ConfigError, RunConfig, apply_overrides, parse_config, stable_hash
from pipelines.engines import check_engine, engine_class, engines_with
from pipelines.inputs import InputFile, PinnedFile, expand_inputs
from pipelines.steps.accounting import AccountingStep
from pipelines.steps.base import SUCCESS, Pins, Step
from pipelines.steps.dedup_exact import DedupExactStep
from pipelines.steps.dedup_near import DedupNearStep
from pipelines.steps.encode import EncodeStep
from pipelines.steps.langid import LangIdStep
from pipelines.steps.normalize import NormalizeStep
from pipelines.steps.read import ReadStep
from pipelines.steps.train_bpe import TrainBpeStep
from pipelines.steps.write import WriteStep
from pipelines.steps.write_shards import WriteShardsStep
from stages import storage

PLAN_FORMAT = 1
PLANS_DIR = "_plans"

# Document steps in order; each consumes the documents of the previous enabled one.
DOC_STEPS: list[type[Step]] = [ReadStep, NormalizeStep, LangIdStep, DedupExactStep, DedupNearStep, WriteStep]


class PlanError(ConfigError):
    """A plan file or a step request that cannot run; the message says what to do (exit 2)."""


def tokenmill_version() -> str:
    try:
        return metadata.version("tokenmill")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_steps(cfg: RunConfig) -> list[Step]:
    """The steps of the plan for this config, in run order (no data is touched)."""
    steps: list[Step] = []
    for cls in DOC_STEPS:
        step = cls() if cls is ReadStep else cls((steps[-1].name,))
        if step.enabled(cfg):
            steps.append(step)
    doc_steps = tuple(s.name for s in steps)
    docs = steps[-1].name  # the cleaned documents
    train = TrainBpeStep((docs,))
    if train.enabled(cfg):
        steps.append(train)
    encode = EncodeStep((docs, train.name) if train.enabled(cfg) else (docs,))
    if encode.enabled(cfg):
        steps += [encode, WriteShardsStep((encode.name,))]
    steps.append(AccountingStep(tuple(s.name for s in steps), doc_steps))
    return steps


def check_config(cfg: RunConfig, steps: list[Step] | None = None) -> list[Step]:
    """Every step's own checks and the engine's, before any work. Returns the steps."""
    steps = steps if steps is not None else build_steps(cfg)
    for step in steps:
        step.check(cfg)
    check_engine(cfg)
    names = [s.name for s in steps]
    unknown = sorted(set(cfg.airflow.step_timeouts) - set(names))
    if unknown:
        raise ConfigError(f"airflow.step_timeouts: no step {', '.join(unknown)} in this plan; its steps are {', '.join(names)}")
    offered = engine_class(cfg.engine.kind).capabilities
    for step in steps:
        missing = sorted(step.requires(cfg) - offered)
        if missing:
            kinds = " or ".join(k for k in engines_with(missing[0]))
            raise ConfigError(f"{step.name} with this config needs an engine with {', '.join(missing)} "
                              f"(engine.kind {kinds}); engine.kind {cfg.engine.kind} has none. Change engine.kind or the "
                              f"setting that needs it (e.g. tokenizer.train.merge_mode: single)")
    return steps


@dataclass(frozen=True)
class PlannedStep:
    name: str
    version: str
    path: str                      # relative to the run root: <name>/<version>
    inputs: tuple[str, ...]
    requires: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "path": self.path, "inputs": list(self.inputs),
                "requires": list(self.requires)}


@dataclass
class Plan:
    run_root: str
    config: dict
    inputs: tuple[InputFile, ...]
    files: dict[str, PinnedFile]
    steps: list[PlannedStep]
    tokenmill_version: str = field(default_factory=tokenmill_version)
    _cfg: RunConfig | None = field(default=None, repr=False, compare=False)
    _objects: dict[str, Step] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "tokenmill_version": self.tokenmill_version,
            "run_root": self.run_root,
            "config": self.config,
            "inputs": [f.to_dict() for f in self.inputs],
            "files": {k: v.to_dict() for k, v in sorted(self.files.items())},
            "steps": [s.to_dict() for s in self.steps],
        }

    @property
    def hash(self) -> str:
        return stable_hash(self.to_dict())

    @property
    def url(self) -> str:
        return storage.join(self.run_root, PLANS_DIR, f"{self.hash}.json")

    @property
    def cfg(self) -> RunConfig:
        if self._cfg is None:
            self._cfg = parse_config(self.config)
        return self._cfg

    @property
    def pins(self) -> Pins:
        return Pins(self.inputs, dict(self.files))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def step(self, name: str) -> PlannedStep:
        for s in self.steps:
            if s.name == name:
                return s
        raise PlanError(f"no step {name!r} in this plan; its steps are {', '.join(self.names)}")

    def step_object(self, name: str) -> Step:
        if not self._objects:
            self._objects = {s.name: s for s in build_steps(self.cfg)}
        self.step(name)
        return self._objects[name]

    def step_url(self, name: str) -> str:
        return storage.join(self.run_root, self.step(name).path)

    def done(self, name: str) -> bool:
        return storage.exists(storage.join(self.step_url(name), SUCCESS))


def pin_files(cfg: RunConfig, steps: list[Step]) -> dict[str, PinnedFile]:
    files: dict[str, PinnedFile] = {}
    for step in steps:
        for key, url in step.dependencies(cfg).items():
            try:
                files[key] = PinnedFile.of(url)
            except FileNotFoundError:
                raise ConfigError(f"{key}: {url} does not exist; give an existing file (or null for the default)") from None
    return files


def resolve_versions(cfg: RunConfig, steps: list[Step], pins: Pins) -> list[PlannedStep]:
    versions: dict[str, str] = {}
    out = []
    for s in steps:
        v = s.version(cfg, pins, {n: versions[n] for n in s.inputs})
        versions[s.name] = v
        out.append(PlannedStep(s.name, v, f"{s.name}/{v}", tuple(s.inputs), tuple(sorted(s.requires(cfg)))))
    return out


def make_plan(cfg: RunConfig) -> Plan:
    """Check the config, list and fingerprint the inputs and dependencies, resolve every
    step's version. Raises ConfigError (nothing has been run or written)."""
    cfg = cfg.model_copy(update={"run_root": storage.absolute(cfg.run_root)})
    steps = check_config(cfg)
    try:
        inputs = tuple(expand_inputs(cfg.input.paths))
    except FileNotFoundError as e:
        raise ConfigError(f"input.paths: {e}") from None
    except ImportError as e:
        raise ConfigError(f"input.paths: the filesystem for this URL is not installed ({e}); "
                          "install the extra, e.g. pip install 'tokenmill[s3]'") from None
    files = pin_files(cfg, steps)
    planned = resolve_versions(cfg, steps, Pins(inputs, files))
    plan = Plan(cfg.run_root, cfg.model_dump(mode="json"), inputs, files, planned, _cfg=cfg)
    plan._objects = {s.name: s for s in steps}
    return plan


def write_plan(plan: Plan) -> str:
    """Store the plan as <run_root>/_plans/<hash>.json (idempotent); returns its URL."""
    if not storage.exists(plan.url):
        storage.atomic_write_json(plan.url, plan.to_dict())
    return plan.url


def load_plan(url: str, overrides: list[str] | None = None) -> Plan:
    """Read a pinned plan and check it can run here. `overrides` (KEY=VALUE) may change
    settings that move no step (engine.*, progress, ...). Raises PlanError saying what to do."""
    replan = "make a new one with `tokenmill plan CONFIG`"
    try:
        raw = json.loads(storage.read_bytes(url))
    except FileNotFoundError:
        raise PlanError(f"plan file {url} not found; {replan}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise PlanError(f"{url} is not a tokenmill plan (not valid JSON: {e}); {replan}") from None
    if not isinstance(raw, dict) or "format" not in raw or "steps" not in raw:
        raise PlanError(f"{url} is not a tokenmill plan; {replan}")
    if raw["format"] != PLAN_FORMAT:
        raise PlanError(f"{url} is a plan of format {raw['format']}, this tokenmill reads format {PLAN_FORMAT}; {replan}")
    try:
        plan = Plan(raw["run_root"], raw["config"], tuple(InputFile(**f) for f in raw["inputs"]),
                    {k: PinnedFile(**v) for k, v in raw["files"].items()},
                    [PlannedStep(s["name"], s["version"], s["path"], tuple(s["inputs"]), tuple(s.get("requires", ())))
                     for s in raw["steps"]], raw["tokenmill_version"])
    except (KeyError, TypeError) as e:
        raise PlanError(f"{url} is not a complete tokenmill plan (missing {e}); {replan}") from None
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if name != f"{plan.hash}.json":
        raise PlanError(f"{url} was changed after it was written (its content hashes to {plan.hash}); {replan}")
    expected = storage.join(plan.run_root, PLANS_DIR, name)
    if storage.absolute(url) != storage.absolute(expected):
        raise PlanError(f"{url} is a plan for run root {plan.run_root}, not for the folder it is in; "
                        f"use {expected}, or plan again for the new run root (--set run_root=...)")
    if plan.tokenmill_version != tokenmill_version():
        raise PlanError(f"{url} was made by tokenmill {plan.tokenmill_version}, this is {tokenmill_version()}; {replan}")
    try:
        cfg = parse_config(apply_overrides(plan.config, overrides or []))
    except ConfigError as e:
        raise PlanError(f"{url}: {e}") from None
    steps = check_config(cfg)
    now = {s.name: s.version for s in resolve_versions(cfg, steps, plan.pins)}
    pinned = {s.name: s.version for s in plan.steps}
    why = "these --set values make" if overrides else "this tokenmill makes"
    fix = f"drop the --set that changes it, or {replan}" if overrides else replan
    if list(now) != list(pinned):
        raise PlanError(f"{url}: {why} other steps ({', '.join(now)}) than the plan's ({', '.join(pinned)}); {fix}")
    moved = [n for n in pinned if now[n] != pinned[n]]
    if moved:
        raise PlanError(f"{url}: {why} another version of {', '.join(moved)} (plan {pinned[moved[0]]}, "
                        f"now {now[moved[0]]}); {fix}")
    plan._cfg = cfg
    plan._objects = {s.name: s for s in steps}
    return plan


# -- why a step will run ------------------------------------------------------------------

def _flat(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _why_new_version(plan: Plan, name: str) -> str | None:
    """What differs from the newest finished other version of this step, if any."""
    fs, path = storage.filesystem(storage.join(plan.run_root, name))
    if not fs.exists(path):
        return None
    proto = storage.protocol_of(plan.run_root)
    records = []
    for entry in fs.ls(path, detail=True):
        success = storage.join(storage.url_of(entry["name"], proto), SUCCESS)
        if entry.get("type") == "directory" and storage.exists(success):
            records.append(storage.read_json(success))
    if not records:
        return None
    old = max(records, key=lambda r: r.get("finished_at", 0))
    step = plan.step_object(name)
    new_cfg = _flat(json.loads(json.dumps(step.version_config(plan.cfg, plan.pins), default=str)))
    old_cfg = _flat(old.get("config", {}))
    changed = sorted(k for k in set(new_cfg) | set(old_cfg) if new_cfg.get(k) != old_cfg.get(k))
    if changed:
        shown = ", ".join(f"{k}: {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return f"settings changed since version {old.get('version')} ({shown}{more})"
    moved = [n for n, v in old.get("inputs", {}).items() if plan.step(n).version != v] if all(
        n in plan.names for n in old.get("inputs", {})) else list(old.get("inputs", {}))
    if moved:
        return f"new version of {', '.join(sorted(moved))} since version {old.get('version')}"
    return f"code changed since version {old.get('version')}"


def step_states(plan: Plan) -> list[tuple[str, str, str]]:
    """(step, "done" | "to run", why) for every step."""
    out = []
    will_run: set[str] = set()
    for s in plan.steps:
        url = plan.step_url(s.name)
        if storage.exists(storage.join(url, SUCCESS)):
            out.append((s.name, "done", f"finished: {s.path}/{SUCCESS}"))
            continue
        will_run.add(s.name)
        waiting = [n for n in s.inputs if n in will_run]
        records = len(storage.list_files(storage.join(url, "_tasks"), ".json"))
        if records:
            why = f"resumes: {records} task records of an interrupted run"
        else:
            why = _why_new_version(plan, s.name) or "not run yet"
            if waiting and not why.startswith("settings changed"):
                why = ""  # its inputs run first; that is the reason
        if waiting:
            why = f"after {', '.join(waiting)}" + (f"; {why}" if why else "")
        out.append((s.name, "to run", why))
    return out
