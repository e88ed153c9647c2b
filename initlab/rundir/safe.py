"""Writing into a directory someone else may have made: never through a link that stands at the
name written (it could point anywhere), never outside the directory given."""

import os
import tempfile
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    """`text` into `path` atomically (a reader never sees half of it), through a fresh temporary
    file beside it: a link at `path` is replaced by the file, never written through."""
    write_bytes(path, text.encode())


def write_bytes(path: Path, data: bytes) -> None:
    """As write_text, for bytes."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # renames over the name itself: a link there is gone, its target untouched
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fresh_target(path: Path) -> Path:
    """`path` ready for a writer that opens it by name (matplotlib, pyarrow): a link standing there
    is removed first, so the file is written in the directory, not where the link points."""
    if path.is_symlink():
        path.unlink()
    return path


def own_dir(path: Path) -> Path:
    """`path` as a real directory: a link standing there is removed and a directory made."""
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def inside(root: Path, relative: str | os.PathLike[str]) -> Path | None:
    """root / relative where that stays inside root once resolved (no `..` or link out of it);
    None otherwise (a sweep table from elsewhere naming a path outside its sweep)."""
    base = root.resolve()
    target = (root / relative).resolve()
    return target if target == base or base in target.parents else None
