"""Released weight files: where they live, where they are cached, and how they are fetched.

Nothing here unpickles anything; reading files is :mod:`auralsam2_core.modeling.checkpoint`'s job.
Why a small downloader of our own (``urllib``): the single files come from three hosts
(Hugging Face, Meta's download server, GitHub releases) and each must resume after an
interruption and pass its checksum before it is moved into place, with no extra dependency in
the core; ``huggingface_hub`` is used only for whole Hugging Face model repos (below).
Downloads go to ``<dest>.part`` first and are checksummed before the final rename, so a
file at its final cache path is always complete (an interrupted download resumes instead).

Hugging Face model repos (``kind="hf_model"``: the Ref-AVS text encoder) are not single
files: they live in Hugging Face's own hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
else ``~/.cache/huggingface/hub``), are fetched only by an explicit ``fetch`` (``auralsam2
download``) with the ``huggingface_hub`` client, and are loaded from that cache only.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

__all__ = [
    "REGISTRY",
    "DownloadError",
    "WeightFile",
    "cache_dir",
    "download",
    "fetch",
    "hf_hub_cache",
    "hf_snapshot",
    "sha256_file",
]

WeightKind = Literal["auralsam2_fuser", "auralsam2_refavs_fuser", "sam2", "vggish", "hf_model"]

_HF = "https://huggingface.co/yyliu01/AuralSAM2/resolve/main/ckpts/"
_SAM2_V1 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
_SAM2_V21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_VGGISH = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"

_CHUNK = 1 << 20
_USER_AGENT = "auralsam2-weights/0.1 (+python-urllib)"


class DownloadError(RuntimeError):
    """A download failed (network, HTTP status, short read) or its checksum did not match."""


@dataclass(frozen=True)
class WeightFile:
    """One released file. ``sha256``/``sha256_prefix`` are None when nobody published them."""

    name: str
    url: str
    kind: WeightKind
    sam2_config: str | None = None  # `sam2` package config; for kind == "sam2"
    sha256: str | None = None
    sha256_prefix: str | None = None  # torch.hub style: leading hex digits in the file name
    pairs_with: str | None = None  # registry name of the SAM2 backbone a fuser was trained on
    note: str = ""
    hf_repo: str | None = None  # kind == "hf_model": the Hugging Face repo id
    hf_files: tuple[str, ...] = ()  # ...and the files of it that are fetched

    @property
    def filename(self) -> str:
        """Cache file name: the last URL path segment, so cached files keep upstream names."""
        return _url_filename(self.url)

    @property
    def cache_path(self) -> Path:
        """Where the file is cached; for a Hugging Face repo its snapshot folder (if cached) or
        its folder in the hub cache."""
        if self.hf_repo:
            snap = hf_snapshot(self.hf_repo)
            return snap or hf_hub_cache() / ("models--" + self.hf_repo.replace("/", "--"))
        return cache_dir() / self.filename

    def is_cached(self) -> bool:
        return hf_snapshot(self.hf_repo) is not None if self.hf_repo else self.cache_path.is_file()


def _fuser(name: str, note: str, kind: WeightKind = "auralsam2_fuser") -> WeightFile:
    # All four were trained on SAM2 hiera-L v1 (authors' configs: sam2_hiera_large.pt).
    return WeightFile(name, f"{_HF}{name}.pth", kind, pairs_with="sam2_hiera_large", note=note)


#: What is fetched of a RoBERTa repo: config, tokenizer files and the safetensors weights
#: (``pytorch_model.bin`` only when a repo has no safetensors; see :func:`fetch`).
_HF_TEXT_FILES = ("config.json", "vocab.json", "merges.txt", "tokenizer.json",
                  "tokenizer_config.json", "special_tokens_map.json", "model.safetensors")


def _sam2(version: str, size: str, short: str) -> WeightFile:
    base, cfg_dir = (_SAM2_V1, "sam2") if version == "sam2" else (_SAM2_V21, "sam2.1")
    name = f"{version}_hiera_{size}"
    return WeightFile(name, f"{base}{name}.pt", "sam2",
                      sam2_config=f"configs/{cfg_dir}/{version}_hiera_{short}.yaml",
                      note="Meta SAM2 checkpoint: {'model': state_dict}")


REGISTRY: dict[str, WeightFile] = {
    w.name: w
    for w in [
        _fuser("auralsam2_avs_v1s", "AVSBench single-source (S4) fuser"),
        _fuser("auralsam2_avs_v1m", "AVSBench multi-source (MS3) fuser"),
        _fuser("auralsam2_avs_v2", "AVSBench semantic (AVSS / v2) fuser"),
        _fuser("auralsam2_refavs_best", "Ref-AVS fuser (text projection; variant refavs)",
               kind="auralsam2_refavs_fuser"),
        WeightFile("distilroberta-base", "https://huggingface.co/distilbert/distilroberta-base",
                   "hf_model", hf_repo="distilbert/distilroberta-base", hf_files=_HF_TEXT_FILES,
                   note="Ref-AVS text encoder (frozen RoBERTa), in the Hugging Face hub cache; "
                        "no checksum published"),
        *[
            _sam2(v, size, short)
            for v in ("sam2", "sam2.1")
            for size, short in (("tiny", "t"), ("small", "s"), ("base_plus", "b+"),
                                ("large", "l"))
        ],
        WeightFile("vggish", _VGGISH, "vggish", sha256_prefix="10086976",
                   note="standalone VGGish (harritaylor/torchvggish): features.*, embeddings.*"),
    ]
}


def hf_hub_cache() -> Path:
    """Hugging Face's hub cache, read from the environment at call time: ``$HF_HUB_CACHE``,
    else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if env := os.environ.get("HF_HUB_CACHE"):
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def hf_snapshot(repo: str, revision: str = "main") -> Path | None:
    """The cached snapshot folder of a Hugging Face model repo (no network), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo, revision=revision, cache_dir=hf_hub_cache(),
                                      local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    return path if (path / "config.json").is_file() else None


def _fetch_hf(entry: WeightFile) -> Path:
    """Download a Hugging Face repo's needed files into the hub cache (resumable, the
    ``huggingface_hub`` client's own checks); no code of the repo is ever run."""
    from huggingface_hub import snapshot_download

    if (snap := hf_snapshot(entry.hf_repo)) is not None:
        return snap
    try:
        snap = Path(snapshot_download(entry.hf_repo, cache_dir=hf_hub_cache(),
                                      allow_patterns=list(entry.hf_files)))
        if not (snap / "model.safetensors").is_file():  # older repos: weights only as .bin
            snap = Path(snapshot_download(entry.hf_repo, cache_dir=hf_hub_cache(),
                                          allow_patterns=["pytorch_model.bin"]))
    except Exception as e:  # network, HTTP and hub errors come in many types
        raise DownloadError(
            f"could not download {entry.hf_repo} from the Hugging Face hub: {e}\n(offline? on "
            f"a machine with internet run `huggingface-cli download {entry.hf_repo}` and copy "
            f"its hub cache folder to {hf_hub_cache()}, or set HF_HOME)") from e
    return snap


def cache_dir() -> Path:
    """``$AURALSAM2_HOME`` or ``~/.cache/auralsam2``; created on first use."""
    env = os.environ.get("AURALSAM2_HOME")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "auralsam2"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _url_filename(url: str) -> str:
    name = urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)
    if not name:
        raise ValueError(f"cannot derive a file name from URL {url!r}")
    return name


def _checksum_problem(path: Path, sha256: str | None, sha256_prefix: str | None) -> str | None:
    """None if ``path`` matches the expected hash (or none is known), else a description."""
    if not sha256 and not sha256_prefix:
        return None
    actual = sha256_file(path)
    if sha256 and actual != sha256.lower():
        return f"expected sha256 {sha256.lower()}, got {actual}"
    if sha256_prefix and not actual.startswith(sha256_prefix.lower()):
        return f"expected sha256 starting with {sha256_prefix.lower()}, got {actual}"
    return None


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            e.close()
            return None  # our .part is not a prefix the server can extend: start over
        raise DownloadError(f"HTTP {e.code} {e.reason} while downloading {url}") from e
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not download {url}: {reason}") from e


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` and verifying before the rename.

    An existing ``dest`` is kept when it passes the checksum (or none is given). A checksum
    mismatch deletes the downloaded bytes, since resuming a corrupt prefix cannot fix it; a
    network failure keeps ``.part`` so the next call resumes.
    """
    dest = Path(dest)
    if dest.is_file():
        if _checksum_problem(dest, sha256, sha256_prefix) is None:
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0

    resp = _open(url, offset, timeout)
    if resp is None:  # 416 on resume
        part.unlink(missing_ok=True)
        offset = 0
        resp = _open(url, 0, timeout)
    with resp:
        status = getattr(resp, "status", 200)
        if offset and status != 206:
            offset = 0  # server ignored Range and sends the whole file: restart
        elif offset:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise DownloadError(
                    f"server answered a resume request for {url} with an unexpected "
                    f"Content-Range {resp.headers.get('Content-Range')!r}; delete {part} "
                    "and retry"
                )
        length = resp.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        total = offset + remaining if remaining is not None else None

        received = 0
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=dest.name, disable=not progress, leave=False) as bar,
        ):
            try:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise DownloadError(
                    f"connection lost while downloading {url} after {offset + received} "
                    f"bytes: {e}; the partial file {part} is kept and the next attempt resumes"
                ) from e
    if remaining is not None and received != remaining:
        raise DownloadError(
            f"short read from {url}: got {offset + received} of {total} bytes; the partial "
            f"file {part} is kept and the next attempt resumes"
        )

    problem = _checksum_problem(part, sha256, sha256_prefix)
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadError(f"checksum mismatch for {url}: {problem}; the file was deleted")
    os.replace(part, dest)
    return dest


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def fetch(name_or_path_or_url: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Resolve a registry name, local path or URL to a local file, downloading if needed.

    Order: URL -> registry name -> existing local path -> registry file name
    (``"auralsam2_avs_v2.pth"``). A local path is never copied or checksummed. A Hugging Face
    repo entry (``distilroberta-base``) gives its snapshot folder in the hub cache.
    """
    s = os.fspath(name_or_path_or_url)
    if _is_url(s):
        dest = cache_dir() / _url_filename(s)
        return dest if dest.is_file() else download(s, dest, progress=progress)

    entry = REGISTRY.get(s)
    path = Path(s).expanduser()
    if entry is None and path.is_file():
        return path
    if entry is None:
        entry = next((w for w in REGISTRY.values() if w.filename == s), None)
    if entry is None:
        looked = path if path.is_absolute() else f"{path} (resolved to {path.resolve()})"
        raise FileNotFoundError(
            f"weight file not found: {looked}; it is not a registry name either "
            f"(known: {', '.join(REGISTRY)}) nor an http(s) URL"
        )

    if entry.hf_repo:
        return _fetch_hf(entry)
    dest = entry.cache_path
    if dest.is_file():
        return dest
    try:
        return download(entry.url, dest, sha256=entry.sha256,
                        sha256_prefix=entry.sha256_prefix, progress=progress)
    except DownloadError as e:
        raise DownloadError(
            f"{e}\n(offline? download {entry.url} yourself and put it at {dest}, "
            "or pass a local path instead of the registry name)"
        ) from e
