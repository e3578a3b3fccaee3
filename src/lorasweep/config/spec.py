"""The validated run spec: a composed Hydra config turned into small typed objects.

Every check that can fail before weights are loaded happens here, with an error that names the
field, the value and what would be valid. Downstream code trusts a RunSpec.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from .dataset_source import dataset_source
from .paths import resolve_data_path
from . import hf_model
from .projection_codes import FAMILIES, canonical_code, check_code_for_family, check_projections

ADAPTER_METHODS = ("lora", "dora", "rslora", "pissa", "qlora", "qlora8")  # methods with lora.* settings
QUANTIZED_METHODS = ("qlora", "qlora8")  # a 4-bit / 8-bit base: bitsandbytes and CUDA
PISSA_INIT = "pissa_init"  # pissa: the adapter as initialised, in the run's folder until the trained one is converted
METHODS = ("none", "lora", "dora", "full", "rslora", "pissa", "qlora", "qlora8")
# hf: a hub id or a local HF-format folder (model=hf model.id=...), its family from its config.json
MODEL_SOURCES = ("package", "gguf_package", "hub", "tiny", "hf")
# model.dtype, the frozen base weights' dtype (adapters and trained heads stay float32 either way):
# bfloat16 halves the base's memory and its casts under a GPU's bf16 autocast (bench/RESULTS.md)
MODEL_DTYPES = ("float32", "bfloat16")
TASK_KINDS = ("classification", "mcq", "chat", "completion")
# mcq answers: "letter" = "B. text" (the letter decides), "option" = the option's text (a small model
# learns to pick the text within minutes; the letter's binding to it takes far longer: bench/RESULTS.md)
MCQ_ANSWERS = ("letter", "option")
GENERATION_KINDS = ("chat", "completion")  # causal-LM SFT, scored by loss, token accuracy, exact match
TOKEN_INITS = ("random", "average", "zero")  # how injected tokens' embedding rows start (lorasweep.model.tokens)


def _fail(field_name: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"{field_name}={value!r} is invalid: {valid}")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from. `source` picks the loader (see lorasweep.model.loading)."""

    name: str                 # registry name, e.g. "minilm" (the conf/model/ file); hf: a slug of the id
    family: str               # projection family: transformers' model_type (llama, qwen3, bert, gpt2, t5, ...)
    source: str               # package | gguf_package | hub | tiny | hf
    id: str = ""              # hub id, or python package name for package sources; hf: hub id or folder
    file: str = ""            # file inside the package (the GGUF)
    config: str = ""          # a shipped config.json (architecture only, under conf/model/): offline counting
    tiny: Mapping[str, Any] = field(default_factory=dict)  # config kwargs of a tiny random model
    layers: int = 0           # keep the checkpoint's first N transformer layers (0 = all): a smaller,
                              #   faster model of the same pretrained weights (the top layers dropped)
    dtype: str = "float32"    # the base weights' dtype (MODEL_DTYPES)
    projections: Mapping[str, str] = field(default_factory=dict)  # letter -> module-name pattern over the
                              #   family's (+model.projections.q=self_attn.q_proj)


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: float = 16.0       # resolved: 2 x r unless set explicitly
    dropout: float = 0.05
    proj: str = "qkvo"        # canonical projection code (order qkvogud)


@dataclass(frozen=True)
class TaskSpec:
    name: str                 # e.g. wordnet_topics
    kind: str                 # classification | mcq | chat | completion (task.format in conf/task/jsonl.yaml)
    train: str                # paths to JSONL or CSV files (a dataset: split expressions, see below)
    eval: str
    test: str                 # the primary test set: metrics.test and the objective
    labels: str = ""          # classification: JSON list of class names (ids follow its order)
    max_train: int = 0        # 0 = all rows
    max_eval: int = 0
    max_test: int = 0         # applies to every test set
    # Fields below are newer than the first results: defining() leaves them out at their defaults,
    # so run keys of earlier runs do not change.
    tests: tuple[tuple[str, str], ...] = ()  # more test sets (name, path): metrics.tests.<name>
    instruction: str = ""     # mcq: the line ending each question ("" = the WordNet wording)
    answer: str = "letter"    # mcq: what the model answers and is scored on (MCQ_ANSWERS)
    max_new_tokens: int = 0   # chat/completion exact match: generation length (0 = longest target + 4)
    # A dataset read through the `datasets` library (task=hf): train, eval, test and tests' values
    # are then split expressions ("train[:90%]"; eval "" = validation, or carved from train).
    dataset: str = ""         # a hub id (ag_news, glue) or a local folder (parquet/arrow/json files,
                              #   or a save_to_disk folder); "" = JSONL/CSV files
    subset: str = ""          # the dataset's config name (glue: sst2)
    revision: str = ""        # a hub revision (commit, tag or branch); "" = its default
    columns: tuple[tuple[str, str | tuple[str, ...]], ...] = ()  # format field -> the dataset's column(s)
    eval_size: float = 0.1    # eval carved from train where the dataset has none: a share (< 1) or rows (>= 1)
    split_seed: int = 0       # the seed that carve draws its rows with
    fingerprint: str = ""     # a hash of the rows the run reads (run/plan.py sets it): a changed dataset,
                              #   a new run key


@dataclass(frozen=True)
class TrainSpec:
    lr: float = 5e-4
    epochs: float = 1.0
    max_steps: int = -1       # > 0 overrides epochs
    batch_size: int = 16
    eval_batch_size: int = 64
    eval_steps: int = 50      # evaluations along training (the curve)
    max_length: int = 128
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class TokenSpec:
    """New tokens injected into the vocabulary (see lorasweep.model.tokens)."""

    new: tuple[str, ...] = ()  # resolved list (a tokens.new JSON file is read into it)
    init: str = "random"       # random | average | zero
    train: bool = True         # adapter methods: train the new rows (counted in the budget)


@dataclass(frozen=True)
class RunSpec:
    model: ModelSpec
    method: str
    lora: LoraSpec
    task: TaskSpec
    train: TrainSpec
    tokens: TokenSpec = TokenSpec()

    def defining(self) -> dict[str, Any]:
        """The run-defining config: what the run key hashes. LoRA fields only matter for lora/dora."""
        d = {"model": _model_defining(self.model), "method": self.method, "task": _task_defining(self.task),
             "train": asdict(self.train)}
        if self.method in ADAPTER_METHODS:
            d["lora"] = asdict(self.lora)
        if self.tokens.new:  # absent when unused: earlier runs keep their keys
            d["tokens"] = {"new": list(self.tokens.new), "init": self.tokens.init, "train": self.tokens.train}
        if self.method == "none":  # nothing is trained: training settings do not change the run
            d["train"] = {"eval_batch_size": self.train.eval_batch_size,
                          "max_length": self.train.max_length, "seed": self.train.seed}
        return d

    @property
    def run_key(self) -> str:
        blob = json.dumps(self.defining(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def slug(self) -> str:
        """A readable name for folders and logs, e.g. minilm-wordnet_topics-lora-qkvo-r8."""
        parts = [self.model.name, self.task.name, self.method]
        if self.method in ADAPTER_METHODS:
            parts += [self.lora.proj, f"r{self.lora.r}"]
        if self.tokens.new:
            parts.append(f"tok{len(self.tokens.new)}")
        return "-".join(parts)


_NEW_TASK_FIELDS = {"tests": (), "instruction": "", "max_new_tokens": 0, "answer": "letter", "dataset": "",
                    "subset": "", "revision": "", "columns": (), "eval_size": 0.1, "split_seed": 0, "fingerprint": ""}
_NEW_MODEL_FIELDS = {"layers": 0, "dtype": "float32", "projections": {}}


def _model_defining(model: ModelSpec) -> dict[str, Any]:
    d = asdict(model)
    for name, default in _NEW_MODEL_FIELDS.items():
        if d[name] == default:
            del d[name]
    return d


def _task_defining(task: TaskSpec) -> dict[str, Any]:
    d = asdict(task)
    for name, default in _NEW_TASK_FIELDS.items():
        if d[name] == default:
            del d[name]
    if "tests" in d:
        d["tests"] = dict(d["tests"])
    if "columns" in d:
        d["columns"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["columns"]}
    return d


def task_from_defining(d: Mapping[str, Any]) -> TaskSpec:
    """The TaskSpec a result's config.task (RunSpec.defining) was made from."""
    d = dict(d)
    d["tests"] = tuple((d.get("tests") or {}).items())
    d["columns"] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in (d.get("columns") or {}).items())
    return TaskSpec(**d)


def from_config(cfg: Mapping[str, Any]) -> RunSpec:
    """Validate a composed config (model, method, lora, task, train) into a RunSpec."""
    model = _model_spec(cfg["model"])
    method = _method_name(cfg["method"])
    lora = _lora_spec(cfg.get("lora") or {}, model if method in ADAPTER_METHODS else None)
    spec = RunSpec(model=model, method=method, lora=lora, task=_task_spec(cfg["task"]),
                   train=_train_spec(cfg["train"]), tokens=_token_spec(cfg.get("tokens") or {}))
    _check_dtype(spec)
    return spec


def _check_dtype(spec: RunSpec) -> None:
    """A bfloat16 base trains only float32 adapters: what else a run trains would be a bfloat16
    weight, whose small updates round away (no float32 copy), or a float32 module fed bfloat16."""
    if spec.model.dtype == "float32" or spec.method == "none":  # none trains nothing: any base evaluates
        return
    if spec.method == "full" or spec.method in QUANTIZED_METHODS:
        why = "it trains the base weights" if spec.method == "full" else \
            "its base is quantized, computing in bfloat16 already"
        raise _fail("model.dtype", spec.model.dtype, f"float32 for method={spec.method} ({why}); "
                    f"bfloat16 is for lora, dora, rslora, pissa and none (the untrained base)")
    if spec.task.kind == "classification":
        raise _fail("model.dtype", spec.model.dtype, f"float32 for task {spec.task.name} (classification): "
                    "its new head trains in full; bfloat16 is for causal-LM tasks (mcq, chat, completion)")
    if spec.tokens.new and spec.tokens.train:
        raise _fail("model.dtype", spec.model.dtype, "float32 with tokens.train=true: the new tokens' "
                    "embedding rows train in the base's dtype")


def _token_spec(t: Mapping[str, Any]) -> TokenSpec:
    new = t.get("new") or []
    if isinstance(new, str):  # a JSON file holding the list, as the Qwen3 tutorial's injected_tokens.json
        path = resolve_data_path(new)
        try:
            new = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise _fail("tokens.new", t.get("new"), f"a list of tokens or a JSON file holding one ({e})") from None
    if not isinstance(new, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in new):
        raise _fail("tokens.new", new, "a list of non-empty strings, e.g. ['<widget>', '<signal>']")
    if len(set(new)) != len(new):
        raise _fail("tokens.new", new, "each token once")
    init = t.get("init", "random")
    if init not in TOKEN_INITS:
        raise _fail("tokens.init", init, f"choose one of {', '.join(TOKEN_INITS)}")
    train = t.get("train", True)
    if not isinstance(train, bool):
        raise _fail("tokens.train", train, "true or false")
    return TokenSpec(new=tuple(new), init=init, train=train)


def _method_name(method: Any) -> str:
    name = method.get("name") if isinstance(method, Mapping) else method
    if name not in METHODS:
        raise _fail("method", name, f"choose one of {', '.join(METHODS)}")
    return name


def _model_spec(m: Mapping[str, Any]) -> ModelSpec:
    if m.get("source") not in MODEL_SOURCES:
        raise _fail("model.source", m.get("source"), f"choose one of {', '.join(MODEL_SOURCES)}")
    if m["source"] != "tiny" and (not m.get("id") or m.get("id") == "???"):
        raise _fail("model.id", m.get("id"), f"a {m['source']} model needs an id"
                    + (": a hub id or a local model folder (model.id=/data/ckpt/my-llama)" if m["source"] == "hf" else ""))
    family, name = m.get("family"), m.get("name")
    if m["source"] == "hf":  # derived unless set: the family from config.json, the name from the id
        family = family or hf_model.model_type(str(m["id"]))
        name = name or hf_model.slug(str(m["id"]))
    elif family not in FAMILIES:
        raise _fail("model.family", family, f"choose one of {', '.join(sorted(FAMILIES))}")
    if not family or not isinstance(family, str):
        raise _fail("model.family", family, "a model type, e.g. llama (config.json's model_type)")
    layers = m.get("layers") or 0
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise _fail("model.layers", layers, "a whole number: keep the first N transformer layers, or 0 for all")
    dtype = m.get("dtype") or "float32"
    if dtype not in MODEL_DTYPES:
        raise _fail("model.dtype", dtype, f"choose one of {', '.join(MODEL_DTYPES)} (the frozen base weights' dtype)")
    return ModelSpec(name=str(name), family=family, source=m["source"],
                     id=str(m.get("id") or ""), file=str(m.get("file") or ""),
                     config=str(m.get("config") or ""),
                     tiny=dict(m.get("tiny") or {}), layers=layers, dtype=dtype,
                     projections=check_projections(m.get("projections")))


def _lora_spec(lo: Mapping[str, Any], model: ModelSpec | None) -> LoraSpec:
    r = lo.get("r", 8)
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise _fail("lora.r", r, "a positive integer rank (e.g. 8), or auto to fit budget.max_trainable")
    scale = lo.get("alpha_scale", 2.0)
    if not _is_number(scale) or scale <= 0:
        raise _fail("lora.alpha_scale", scale, "a positive number: alpha = alpha_scale x r")
    alpha = lo.get("alpha")
    alpha = scale * r if alpha is None else alpha  # alpha follows r unless set explicitly
    if not _is_number(alpha) or alpha <= 0:
        raise _fail("lora.alpha", alpha, "a positive number, or null for lora.alpha_scale x r")
    dropout = lo.get("dropout", 0.0)
    if not _is_number(dropout) or not 0.0 <= dropout < 1.0:
        raise _fail("lora.dropout", dropout, "a probability in [0, 1)")
    proj = lo.get("proj", "qkvo")
    # A model named by its config.json (source hf) may lack a letter's map: model/projections then
    # refuses it naming the model's linear modules, which only its skeleton knows.
    proj = (check_code_for_family(proj, model.family, projections=model.projections, strict=model.source != "hf")
            if model else canonical_code(proj))
    return LoraSpec(r=r, alpha=float(alpha), dropout=float(dropout), proj=proj)


def _task_spec(t: Mapping[str, Any]) -> TaskSpec:
    kind = t.get("kind", t.get("format"))  # own data (task=jsonl, task=hf) names it task.format
    if kind not in TASK_KINDS:
        key = "task.kind" if "kind" in t else "task.format"
        raise _fail(key, kind, f"choose one of {', '.join(TASK_KINDS)}")
    if "dataset" in t:  # task=hf: a dataset through the datasets library (config/dataset_source.py)
        source = dataset_source(t, kind, _tests(t, "split names, e.g. +task.tests.hard='test[:100]'"))
    else:
        source = _file_source(t)
    limits = {k: t.get(k, 0) or 0 for k in ("max_train", "max_eval", "max_test", "max_new_tokens")}
    for k, v in limits.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise _fail(f"task.{k}", v, "a non-negative integer (0 = all rows)")
    answer = t.get("answer") or "letter"
    if answer not in MCQ_ANSWERS:
        raise _fail("task.answer", answer, "letter (the reply is 'B. text') or option (the option's text alone)")
    derived = source.pop("name")  # a dataset's own name, where task.name is left empty
    return TaskSpec(name=str(t.get("name") or derived), kind=kind, labels=str(t.get("labels") or ""),
                    instruction=str(t.get("instruction") or ""), answer=answer, **source, **limits)


def _file_source(t: Mapping[str, Any]) -> dict[str, Any]:
    """train, eval, test and tests of JSONL/CSV files (task=jsonl and the shipped tasks)."""
    for key in ("train", "eval", "test"):
        if not t.get(key) or t.get(key) == "???":  # ??? is Hydra's "required" left unset
            raise _fail(f"task.{key}", t.get(key), f"a path to a JSONL or CSV file is required "
                                                   f"(task.{key}=path/to/file.jsonl)")
    tests = _tests(t, "JSONL/CSV paths, e.g. +task.tests.mcq_con=data/con.jsonl")
    return {"name": str(t["name"]), "train": str(t["train"]), "eval": str(t["eval"]), "test": str(t["test"]), "tests": tests}


def _tests(t: Mapping[str, Any], what: str) -> tuple[tuple[str, str], ...]:
    tests = t.get("tests") or {}
    if not isinstance(tests, Mapping) or not all(isinstance(v, str) and v for v in tests.values()):
        raise _fail("task.tests", tests, f"a mapping of test-set names to {what}")
    if "test" in tests:
        raise _fail("task.tests", dict(tests), "the name 'test' is the primary test set (task.test)")
    return tuple((str(k), str(v)) for k, v in tests.items())


def _train_spec(tr: Mapping[str, Any]) -> TrainSpec:
    spec = TrainSpec(**{k: tr[k] for k in TrainSpec.__dataclass_fields__ if k in tr})
    checks = [
        ("lr", spec.lr > 0 if _is_number(spec.lr) else False, "a positive number, e.g. 2e-4"),
        ("epochs", _is_number(spec.epochs) and spec.epochs > 0, "a positive number of epochs"),
        ("max_steps", isinstance(spec.max_steps, int) and (spec.max_steps > 0 or spec.max_steps == -1),
         "a positive number of steps, or -1 to train for train.epochs"),
        ("batch_size", isinstance(spec.batch_size, int) and spec.batch_size > 0, "a positive integer"),
        ("eval_batch_size", isinstance(spec.eval_batch_size, int) and spec.eval_batch_size > 0,
         "a positive integer"),
        ("eval_steps", isinstance(spec.eval_steps, int) and spec.eval_steps > 0, "a positive integer"),
        ("max_length", isinstance(spec.max_length, int) and spec.max_length >= 8, "an integer >= 8"),
        ("weight_decay", _is_number(spec.weight_decay) and spec.weight_decay >= 0, "a number >= 0"),
        ("warmup_ratio", _is_number(spec.warmup_ratio) and 0 <= spec.warmup_ratio < 1,
         "a fraction in [0, 1)"),
        ("seed", isinstance(spec.seed, int) and not isinstance(spec.seed, bool) and 0 <= spec.seed < 2**32,
         "a whole number from 0 to 2**32 - 1 (numpy's seeds, which the Trainer sets)"),
    ]
    for name, ok, valid in checks:
        if not ok:
            raise _fail(f"train.{name}", getattr(spec, name), valid)
    return spec


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
