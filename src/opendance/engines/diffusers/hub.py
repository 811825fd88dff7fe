"""Open-weight models on this machine: pull them from the Hugging Face Hub ahead of time, list,
check and remove them (`opendance models ...`).

Why: a route naming a hub id makes the first request download tens of GB, and a download cut
short fails only when a worker loads it. Pulling first puts each model in its own folder under
`models_dir` (one folder a model, so `rm` frees exactly its space), with a small record of what
was pulled; `check` proves a folder loadable without a GPU (files, configs, a build on the meta
device); `resolve_reference` lets the engine take a short name, a hub id or a folder alike.

Downloads are huggingface_hub's own (`snapshot_download`), so HF_HOME, HF_TOKEN, HF_ENDPOINT and
HF_HUB_OFFLINE work as users know them; a dropped connection resumes mid-file, and a pull run
again fetches only the files still missing. torch, diffusers and transformers are imported only
by `check`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opendance.settings import Settings

#: The record `pull` writes next to a model's files: hub id, commit, complete or not.
RECORD = ".opendance-model.json"
#: Formats a PyTorch load never reads (Flax, TensorFlow, ONNX): not downloaded.
IGNORE = ["*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "flax_model*", "tf_model*"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


@dataclass(frozen=True)
class KnownModel:
    """A model with a short name; `gpu_gib` is rough GPU memory in bf16, for the docs."""

    hub_id: str
    family: str
    kind: Literal["pipeline", "lora"]
    description: str
    gpu_gib: float


KNOWN: dict[str, KnownModel] = {
    "wan2.1-t2v-1.3b": KnownModel("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan21", "pipeline",
                                  "Wan 2.1 text-to-video 1.3B, 480p", 23),
    "wan2.1-t2v-14b": KnownModel("Wan-AI/Wan2.1-T2V-14B-Diffusers", "wan21", "pipeline",
                                 "Wan 2.1 text-to-video 14B, 480p and 720p", 60),
    "wan2.1-i2v-14b-480p": KnownModel("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "wan21",
                                      "pipeline", "Wan 2.1 image-to-video 14B, 480p", 65),
    "wan2.2-ti2v-5b": KnownModel("Wan-AI/Wan2.2-TI2V-5B-Diffusers", "wan22_ti2v", "pipeline",
                                 "Wan 2.2 text- and image-to-video 5B, 720p at 24 fps", 30),
    "ltx-video": KnownModel("Lightricks/LTX-Video", "ltx", "pipeline",
                            "LTX-Video 2B, fast text- and image-to-video", 20),
    "wan2.1-distill-loras": KnownModel("lightx2v/Wan2.1-Distill-Loras", "wan21", "lora",
                                       "lightx2v 4-step distillation LoRAs, Wan 2.1 14B", 1),
    # For Wan 2.2 A14B (high- and low-noise experts), which the lightx2v engine serves.
    "wan2.2-distill-loras": KnownModel("lightx2v/Wan2.2-Distill-Loras", "wan22_a14b", "lora",
                                       "lightx2v 4-step distillation LoRAs, Wan 2.2 A14B", 1),
}  # fmt: skip
_SHORT = {entry.hub_id.lower(): name for name, entry in KNOWN.items()}


class ModelError(Exception):
    """A model cannot be pulled, found or removed; the message is one line for the user."""


class UsageError(ModelError):
    """The name is neither a short name, a hub id (owner/name) nor a pulled folder."""


@dataclass(frozen=True)
class LocalModel:
    """A folder under `models_dir`, as `list_models` reads it."""

    name: str
    path: Path
    hub_id: str | None
    revision: str | None
    family: str | None
    kind: str
    size_bytes: int
    dtype: str | None
    complete: bool


def models_dir(settings: Settings) -> Path:
    """Where pulled models live: `OPENDANCE_MODELS_DIR`, else `data_dir/models`."""
    override = os.environ.get("OPENDANCE_MODELS_DIR")
    return Path(override).expanduser() if override else settings.data_dir / "models"


def hub_id_of(name: str) -> str:
    """The hub id of a short name or of a hub id (UsageError for anything else)."""
    if name in KNOWN:
        return KNOWN[name].hub_id
    if _HUB_ID.match(name) and ".." not in name:
        return name
    raise UsageError(f"unknown model {name!r}: use a short name ({', '.join(KNOWN)}) or owner/name")


def folder_name(name: str) -> str:
    """The folder a model is pulled to: its short name, else `owner--name`."""
    hub_id = hub_id_of(name)
    return _SHORT.get(hub_id.lower(), hub_id.replace("/", "--"))


def _record(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(folder: Path, **record: Any) -> None:
    temporary = folder / f"{RECORD}.tmp"
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    temporary.replace(folder / RECORD)


def find_local(name: str, root: Path) -> Path | None:
    """The folder under `root` holding `name` (a short name, hub id or folder name), if any."""
    candidates = [root / name] if "/" not in name and name not in ("", ".", "..") else []
    with contextlib.suppress(UsageError):
        candidates.insert(0, root / folder_name(name))
        wanted = hub_id_of(name).lower()
        candidates += [
            folder
            for folder in sorted(root.iterdir() if root.is_dir() else [])
            if str(_record(folder).get("hub_id", "")).lower() == wanted
        ]
    return next((folder for folder in candidates if folder.is_dir()), None)


def resolve_reference(reference: str, root: Path) -> str:
    """What to give `from_pretrained`: a local folder as is; a short name or hub id that was
    pulled (completely): its folder; else the hub id, which `from_pretrained` downloads."""
    if Path(reference).expanduser().is_dir():
        return str(Path(reference).expanduser())
    folder = find_local(reference, root)
    if folder is not None and _record(folder).get("complete", True):
        return str(folder)
    return KNOWN[reference].hub_id if reference in KNOWN else reference


def pull(
    name: str, root: Path, *, revision: str | None = None, token: str | None = None,
    progress: bool = True,
) -> Path:  # fmt: skip
    """Download a model to `root/<folder_name>`: for a pipeline `model_index.json` and the
    folders it names, for anything else every file. Pulling again resumes or updates it."""
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import RemoteEntryNotFoundError
    from huggingface_hub.utils.tqdm import disable_progress_bars

    hub_id = hub_id_of(name)
    target = root / folder_name(name)
    known = KNOWN.get(_SHORT.get(hub_id.lower(), ""))
    quiet = contextlib.nullcontext() if progress else disable_progress_bars()
    try:
        with quiet:
            # One commit for every file, even if the branch moves during the pull.
            commit = (
                revision or _record(target).get("revision")
                if constants.is_offline_mode()
                else HfApi(token=token).model_info(hub_id, revision=revision).sha
            )
            target.mkdir(parents=True, exist_ok=True)
            _write_record(target, hub_id=hub_id, revision=commit, complete=False)
            patterns: list[str] | None = None
            if known is None or known.kind == "pipeline":
                try:
                    index = hf_hub_download(
                        hub_id, "model_index.json", revision=commit, local_dir=target, token=token
                    )
                    components = [k for k, v in _json(Path(index)).items() if _component(v)]
                    patterns = ["model_index.json", *(f"{c}/*" for c in components)]
                except RemoteEntryNotFoundError:
                    patterns = None  # not a pipeline (a LoRA, single weights): all of it
            snapshot_download(
                hub_id, revision=commit, local_dir=target, token=token,
                allow_patterns=patterns, ignore_patterns=IGNORE,
            )  # fmt: skip
    except Exception as exc:  # hub errors are OSErrors, transport ones vary by version
        raise ModelError(f"cannot pull {hub_id}: {_hub_problem(exc, revision)}") from exc
    _write_record(target, hub_id=hub_id, revision=commit, complete=True)
    return target


def _hub_problem(exc: BaseException, revision: str | None) -> str:
    """One line for a failed pull (huggingface_hub's messages are paragraphs)."""
    from huggingface_hub import errors

    for kind, text in (
        (errors.GatedRepoError, "gated: accept its terms on the hub, then set HF_TOKEN"),
        (errors.RepositoryNotFoundError, "not on the hub (if private: set HF_TOKEN)"),
        (errors.RevisionNotFoundError, f"no revision {revision!r} on the hub"),
        (errors.LocalEntryNotFoundError, "the hub is out of reach (or HF_HUB_OFFLINE is set)"),
    ):
        if isinstance(exc, kind):
            return text
    return f"{type(exc).__name__}: {_first_line(exc)} (pulling again resumes)"


def _json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


def _component(value: Any) -> bool:
    """Whether a `model_index.json` entry names a component (["library", "Class"])."""
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a `.safetensors` file (tensor -> dtype, shape, offsets), read without
    loading a tensor; ValueError if it is not a whole safetensors file (e.g. cut short)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError("too short for a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 100 * 2**20):
            raise ValueError(f"header length {length} does not fit a {size}-byte file")
        try:
            header = json.loads(handle.read(length))
            end = max(
                (int(e["data_offsets"][1]) for k, e in header.items() if k != "__metadata__"),
                default=0,
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise ValueError("the header is not a safetensors header") from None
    if end > size - 8 - length:
        raise ValueError(f"cut short: {size - 8 - length} of {end} data bytes")
    return dict(header)


def _weights(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.safetensors") if ".cache" not in p.parts)


def _dtype(folder: Path) -> str | None:
    files = _weights(folder / "transformer") if (folder / "transformer").is_dir() else []
    for file in files or _weights(folder):
        with contextlib.suppress(OSError, ValueError):
            header = safetensors_header(file)
            kinds = sorted({e["dtype"] for k, e in header.items() if k != "__metadata__"})
            return "+".join(_DTYPES.get(kind, kind.lower()) for kind in kinds) or None
    return None


def describe(folder: Path) -> LocalModel:
    """What `list_models` says of one folder."""
    from opendance.engines.base import EngineError
    from opendance.engines.diffusers.loading import detect_family

    record = _record(folder)
    hub_id = record.get("hub_id")
    known = KNOWN.get(_SHORT.get(str(hub_id).lower(), folder.name))
    family, kind = (known.family, known.kind) if known else (None, "lora")
    if known is None and not _weights(folder):
        kind = "unknown"
    if (folder / "model_index.json").is_file():
        kind = "pipeline"
        try:
            family = detect_family(_json(folder / "model_index.json"))
        except (EngineError, OSError, ValueError):
            family = None
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return LocalModel(
        name=folder.name, path=folder, hub_id=hub_id, revision=record.get("revision"),
        family=family, kind=kind, size_bytes=size, dtype=_dtype(folder),
        complete=bool(record.get("complete", True)),
    )  # fmt: skip


def list_models(root: Path) -> list[LocalModel]:
    """Every model folder under `root` (pulled, or copied in by hand), by name."""
    if not root.is_dir():
        return []
    return [describe(f) for f in sorted(root.iterdir()) if f.is_dir() and f.name[0] != "."]


def check(name: str, root: Path) -> list[str]:
    """What is wrong with a pulled model (empty: it loads). Files, configs and a build of every
    model component on the meta device: no GPU, no weights read beyond their headers."""
    folder = find_local(name, root) or (Path(name) if Path(name).is_dir() else None)
    if folder is None:
        return [f"{name} is not pulled (see `opendance models list`)"]
    problems = [] if _record(folder).get("complete", True) else ["the pull did not finish"]
    if not (folder / "model_index.json").is_file():
        if describe(folder).kind == "pipeline":
            return [*problems, "model_index.json missing"]
        files = _weights(folder)
        return problems + (_check_files("weights", files) if files else ["no .safetensors files"])
    try:
        index = _json(folder / "model_index.json")
    except (OSError, ValueError) as exc:
        return [*problems, f"model_index.json: {_first_line(exc)}"]
    for component, value in index.items():
        if not component.startswith("_") and _component(value):
            problems += _check_component(folder / component, component, *value)
    return problems


def _check_files(component: str, files: list[Path]) -> list[str]:
    problems = []
    for file in files:
        try:
            safetensors_header(file)
        except (OSError, ValueError) as exc:
            problems.append(f"{component}: {file.name}: {exc}")
    return problems


def _check_weights(component: str, folder: Path) -> list[str]:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            shards = sorted({str(s) for s in _json(indexes[0])["weight_map"].values()})
        except (OSError, ValueError, KeyError, AttributeError):
            return [f"{component}: {indexes[0].name} is not a safetensors index"]
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            return [f"{component}: missing weight shards {', '.join(missing)}"]
        return _check_files(component, [folder / shard for shard in shards])
    files = sorted(folder.glob("*.safetensors"))
    if not files and not any(folder.glob("*.bin")):
        return [f"{component}: no weight files"]
    return _check_files(component, files)


def _check_component(folder: Path, component: str, library: str, class_name: str) -> list[str]:
    if not folder.is_dir():
        return [f"{component}: folder missing"]
    if not any(folder.glob("*.json")):
        return [f"{component}: no config file"]
    try:
        cls: Any = getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError) as exc:
        return [f"{component}: cannot import {library}.{class_name} ({exc})"]
    bases = {base.__name__ for base in cls.__mro__}
    is_model = bool(bases & {"ModelMixin", "PreTrainedModel"})
    problems = _check_weights(component, folder) if is_model else []
    try:
        if is_model:
            accelerate: Any = importlib.import_module("accelerate")
            with accelerate.init_empty_weights():
                if hasattr(cls, "load_config"):  # diffusers
                    cls.from_config(cls.load_config(folder))
                else:  # transformers
                    cls._from_config(cls.config_class.from_pretrained(folder))
        elif hasattr(cls, "load_config"):  # schedulers
            cls.load_config(folder)
        else:  # tokenizers, image processors: small, loaded on the CPU
            cls.from_pretrained(folder)
    except Exception as exc:
        problems.append(f"{component}: {class_name} does not load: {_first_line(exc)}")
    return problems


def remove(name: str, root: Path) -> Path:
    """Delete a pulled model's folder (only ever one under `root`); the folder removed."""
    folder = find_local(name, root)
    if folder is None or folder.resolve().parent != root.resolve():
        raise ModelError(f"{name} is not pulled (see `opendance models list`)")
    shutil.rmtree(folder)
    return folder
