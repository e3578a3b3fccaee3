"""Where the project's own files are: data paths in configs resolve here when not found in the cwd."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]  # src/lorasweep/config/paths.py -> the repository
CONF_DIR = PROJECT_ROOT / "conf"


def resolve_data_path(p: str | Path) -> Path:
    """An absolute path as is; a relative one against the current directory when the file is
    there, else against the project root (so `data/wordnet_topics/train.jsonl` works anywhere)."""
    path = Path(p)
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path
