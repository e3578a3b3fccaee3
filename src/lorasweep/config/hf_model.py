"""A model named by its hub id or its local folder (model=hf model.id=...): where its config.json
is, its family (the config's model_type) and a readable name, with no torch and no weights.

The config.json is read from the folder, else from the local HF cache, else fetched alone from the
hub when it answers at once (huggingface_hub's single-file download): a plan counts from it.
"""
from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ConfigError, ModelUnavailableError

HUB_PROBE_TIMEOUT_S = 3.0  # one TCP connect: enough for a reachable hub, short when there is none
_PATH_LIKE = ("/", "./", "../", "~")


def local_folder(model_id: str) -> Path | None:
    """The folder `model_id` names (relative to the current directory), or None for a hub id.
    A path-like id (/..., ./..., ~...) that is no folder is an error, not a hub id."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path.resolve()
    if model_id.startswith(_PATH_LIKE) or model_id.count("/") > 1:
        raise ConfigError(f"model.id={model_id!r} is invalid: no such folder ({path.resolve()}); a model "
                          f"folder in HF format (config.json, weights, tokenizer), or a hub id such as "
                          f"google/gemma-3-270m")
    return None


def config_path(model_id: str) -> Path:
    """config.json of a folder or hub id: the folder's, the HF cache's, or downloaded alone."""
    folder = local_folder(model_id)
    if folder is not None:
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model.id={model_id!r} is invalid: {folder} has no config.json "
                              f"(a model folder in HF format, as save_pretrained writes it)")
        return folder / "config.json"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_id, "config.json")
    if isinstance(cached, str):
        return Path(cached)
    if not hub_reachable():
        raise ModelUnavailableError(f"model.id={model_id!r}: its config.json is not in the local HF cache "
                                    f"and the hub cannot be reached from here; name a local model folder, "
                                    f"or fetch it where a hub is reachable and set HF_HOME")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(model_id, "config.json"))
    except Exception as err:  # not found, gated, network: one line
        raise ModelUnavailableError(f"model.id={model_id!r}: its config.json could not be downloaded "
                                    f"from the hub: {str(err).splitlines()[0]}") from err


def model_type(model_id: str) -> str:
    """The model's family: config.json's model_type."""
    path = config_path(model_id)
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise ConfigError(f"model.id={model_id!r}: {path} cannot be read as a config.json ({err})") from err
    if not kind:
        raise ConfigError(f"model.id={model_id!r}: {path} has no model_type; set model.family")
    return str(kind)


def slug(model_id: str) -> str:
    """A readable name for a hub id or folder: google/gemma-3-270m -> gemma-3-270m,
    /data/ckpt/my-llama/ -> my-llama (folders and run slugs use it)."""
    tail = Path(model_id.rstrip("/")).name or model_id
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-.").lower() or "model"


def hub_reachable() -> bool:
    """False when offline mode is set or the hub host does not accept a TCP connection quickly."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True  # the proxy decides; let huggingface_hub try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443),
                                      timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False
