"""`opendance models`: pull from a fake hub on loopback (tests.helpers.hub) in a subprocess, as
a user runs it (HF_ENDPOINT, HF_HOME), then check, list, break, repair and remove; an
interrupted download resumes; the errors are one line with the documented exit codes. Then
`resolve_reference`, the safetensors header reader and LoRA checks on their own."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from opendance.engines.diffusers import hub
from tests.helpers.hub import FakeHub, fake_hub
from tests.helpers.pipelines import build_wan21

TINY = "tiny/wan-tiny"
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wan21(tmp_path_factory.mktemp("repos") / "wan-tiny")


@pytest.fixture
def fake(tiny_wan: Path) -> Iterator[FakeHub]:
    with fake_hub({TINY: tiny_wan}) as served:
        yield served


def models(served: FakeHub, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m opendance models ARGS` with huggingface_hub pointed at the fake hub."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENDANCE_", "HF_"))}
    clean |= {
        "HF_ENDPOINT": served.url,
        "HF_HOME": str(home / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "OPENDANCE_DATA_DIR": str(home / "data"),
        "COLUMNS": "200",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "opendance", "models", *args],
        env=clean,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )


def repo_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.parts and p.name != hub.RECORD
    }


def downloads(served: FakeHub) -> list[str]:
    return [path for method, path, _ in served.requests if method == "GET" and "/resolve/" in path]


@pytest.mark.slow
def test_pull_check_list_break_repair_remove(fake: FakeHub, tiny_wan: Path, tmp_path: Path) -> None:
    pulled = models(fake, tmp_path, "pull", TINY)
    assert pulled.returncode == 0, pulled.stderr
    folder = tmp_path / "data" / "models" / "tiny--wan-tiny"
    assert f"pulled {TINY} to {folder}" in pulled.stdout
    assert repo_files(folder) == repo_files(tiny_wan)
    record = json.loads((folder / hub.RECORD).read_text())
    assert record == {"hub_id": TINY, "revision": fake.commit(TINY), "complete": True}

    checked = models(fake, tmp_path, "check", TINY)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok" in checked.stdout

    listed = json.loads(models(fake, tmp_path, "list", "--json").stdout)
    assert [(m["name"], m["hub_id"], m["family"], m["kind"], m["dtype"]) for m in listed] == [
        ("tiny--wan-tiny", TINY, "wan21", "pipeline", "float32")
    ]
    assert listed[0]["size_bytes"] >= sum(len(data) for data in repo_files(tiny_wan).values())
    assert listed[0]["complete"] is True

    # A weight file gone: check names the component and fails; a pull fetches only that file.
    (folder / WEIGHTS).unlink()
    broken = models(fake, tmp_path, "check", TINY)
    assert broken.returncode == 1
    assert "problem: transformer: no weight files" in broken.stdout
    fake.requests.clear()
    assert models(fake, tmp_path, "pull", TINY).returncode == 0
    assert downloads(fake) == [f"/{TINY}/resolve/{fake.commit(TINY)}/{WEIGHTS}"]
    assert models(fake, tmp_path, "check", TINY).returncode == 0

    # Offline, a pulled model is there already: the pull succeeds without asking the hub.
    fake.requests.clear()
    offline = models(fake, tmp_path, "pull", TINY, HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert fake.requests == []

    # rm asks first; without a terminal to ask on, it wants --yes (a usage error).
    refused = models(fake, tmp_path, "rm", TINY)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert folder.is_dir()
    removed = models(fake, tmp_path, "rm", TINY, "--yes")
    assert removed.returncode == 0, removed.stderr
    assert not folder.exists()
    assert json.loads(models(fake, tmp_path, "list", "--json").stdout) == []


@pytest.mark.slow
def test_a_dropped_connection_resumes_where_it_stopped(tmp_path: Path) -> None:
    """huggingface_hub resumes a cut download with a Range request from the last whole chunk it
    wrote (10 MiB chunks: the file is 24 MB, cut at half)."""
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE
    from safetensors.numpy import save_file

    repo = tmp_path / "repo"
    repo.mkdir()
    weights = np.arange(6_000_000, dtype=np.float32)
    save_file({"lora_B.weight": weights}, str(repo / "lora.safetensors"))
    with fake_hub({"tiny/big-lora": repo}) as served:
        served.cut_once.add("lora.safetensors")
        pulled = models(served, tmp_path, "pull", "tiny/big-lora")
    assert pulled.returncode == 0, pulled.stderr
    folder = tmp_path / "data" / "models" / "tiny--big-lora"
    assert (folder / "lora.safetensors").read_bytes() == (repo / "lora.safetensors").read_bytes()
    ranges = [r for _, path, r in served.requests if path.endswith("lora.safetensors") and r]
    assert ranges == [f"bytes={DOWNLOAD_CHUNK_SIZE}-"]


@pytest.mark.slow
def test_a_short_name_pulls_only_the_pipeline_folders(tiny_wan: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_wan, repo)
    (repo / "README.md").write_text("# a model card\n")
    (repo / "single-file-checkpoint.safetensors").write_bytes(b"not needed by diffusers")
    hub_id = hub.KNOWN["wan2.1-t2v-1.3b"].hub_id
    with fake_hub({hub_id: repo}) as served:
        pulled = models(served, tmp_path, "pull", "wan2.1-t2v-1.3b")
    assert pulled.returncode == 0, pulled.stderr
    root = tmp_path / "data" / "models"
    assert repo_files(root / "wan2.1-t2v-1.3b") == repo_files(tiny_wan)
    assert hub.resolve_reference("wan2.1-t2v-1.3b", root) == str(root / "wan2.1-t2v-1.3b")
    assert hub.resolve_reference(hub_id, root) == str(root / "wan2.1-t2v-1.3b")


@pytest.mark.slow
def test_a_lora_repo_is_pulled_whole(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    repo = tmp_path / "repo"
    repo.mkdir()
    save_file(
        {"lora_A.weight": np.ones((4, 8), np.float16)}, str(repo / "distill_lora.safetensors")
    )
    (repo / "README.md").write_text("# 4-step LoRA\n")
    with fake_hub({"tiny/lora": repo}) as served:
        assert models(served, tmp_path, "pull", "tiny/lora").returncode == 0
        listed = json.loads(models(served, tmp_path, "list", "--json").stdout)
    root = tmp_path / "data" / "models"
    assert repo_files(root / "tiny--lora") == repo_files(repo)
    assert [(m["kind"], m["dtype"], m["family"]) for m in listed] == [("lora", "float16", None)]
    assert hub.check("tiny/lora", root) == []


@pytest.mark.slow
def test_errors_are_one_line_with_exit_codes(fake: FakeHub, tmp_path: Path) -> None:
    missing = models(fake, tmp_path, "pull", "tiny/no-such-repo")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "error: cannot pull tiny/no-such-repo: not on the hub (if private: set HF_TOKEN)"
    ]
    assert not (tmp_path / "data" / "models" / "tiny--no-such-repo").exists()

    revision = models(fake, tmp_path, "pull", TINY, "--revision", "v9")
    assert revision.returncode == 1
    assert revision.stderr.strip().splitlines() == [
        f"error: cannot pull {TINY}: no revision 'v9' on the hub"
    ]

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"
    unreachable = models(fake, tmp_path, "pull", TINY, HF_ENDPOINT=nobody)
    assert unreachable.returncode == 1
    [line] = unreachable.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot pull {TINY}: ConnectError: ")
    assert line.endswith("(pulling again resumes)")

    unknown = models(fake, tmp_path, "pull", "no-such-model")
    assert unknown.returncode == 2
    assert "unknown model 'no-such-model'" in unknown.stderr

    not_pulled = models(fake, tmp_path, "check", TINY)
    assert not_pulled.returncode == 1
    assert f"{TINY} is not pulled" in not_pulled.stdout
    assert models(fake, tmp_path, "rm", TINY, "--yes").returncode == 1


# ---------------------------------------------------------------------------------------------
# The library, in process


def _pulled(root: Path, name: str, hub_id: str, complete: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    record = {"hub_id": hub_id, "revision": "0" * 40, "complete": complete}
    (folder / hub.RECORD).write_text(json.dumps(record))
    return folder


def test_resolve_reference(tmp_path: Path) -> None:
    root = tmp_path / "models"
    wan = hub.KNOWN["wan2.1-t2v-1.3b"].hub_id
    # Nothing pulled: the hub id, for from_pretrained to download.
    assert hub.resolve_reference("wan2.1-t2v-1.3b", root) == wan
    assert hub.resolve_reference("someone/some-model", root) == "someone/some-model"
    # A local folder as it is.
    assert hub.resolve_reference(str(tmp_path), root) == str(tmp_path)
    # Pulled: by short name, hub id (any case) or folder name.
    folder = _pulled(root, "wan2.1-t2v-1.3b", wan)
    assert hub.resolve_reference("wan2.1-t2v-1.3b", root) == str(folder)
    assert hub.resolve_reference(wan.lower(), root) == str(folder)
    other = _pulled(root, "someone--some-model", "someone/some-model")
    assert hub.resolve_reference("someone/some-model", root) == str(other)
    assert hub.resolve_reference("someone--some-model", root) == str(other)
    # A pull that did not finish is not used.
    _pulled(root, "ltx-video", hub.KNOWN["ltx-video"].hub_id, complete=False)
    assert hub.resolve_reference("ltx-video", root) == "Lightricks/LTX-Video"


def test_models_dir_defaults_to_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opendance.settings import Settings

    monkeypatch.delenv("OPENDANCE_MODELS_DIR", raising=False)
    settings = Settings(data_dir=tmp_path)
    assert hub.models_dir(settings) == tmp_path / "models"
    monkeypatch.setenv("OPENDANCE_MODELS_DIR", str(tmp_path / "elsewhere"))
    assert hub.models_dir(settings) == tmp_path / "elsewhere"


def test_safetensors_headers_and_lora_checks(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    root = tmp_path / "models"
    lora = _pulled(root, "someone--lora", "someone/lora")
    path = lora / "lora.safetensors"
    save_file({"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float16)}, str(path))
    header = hub.safetensors_header(path)
    assert {name: entry["dtype"] for name, entry in header.items()} == {"a": "F32", "b": "F16"}
    assert hub.check("someone/lora", root) == []
    assert hub.describe(lora).dtype == "float16+float32"

    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="cut short"):
        hub.safetensors_header(path)
    assert hub.check("someone/lora", root) == [
        "weights: lora.safetensors: cut short: 27 of 32 data bytes"
    ]
    path.write_bytes(b"\xff" * 16)
    assert "does not fit" in hub.check("someone/lora", root)[0]
    assert hub.check("someone/missing", root) == [
        "someone/missing is not pulled (see `opendance models list`)"
    ]


@pytest.mark.slow
def test_check_finds_missing_shards_bad_configs_and_cut_files(
    tiny_wan: Path, tmp_path: Path
) -> None:
    from diffusers import WanTransformer3DModel

    root = tmp_path / "models"
    folder = root / "tiny--wan-tiny"
    shutil.copytree(tiny_wan, folder)
    shutil.rmtree(folder / "transformer")
    transformer = WanTransformer3DModel.from_pretrained(tiny_wan / "transformer")
    transformer.save_pretrained(folder / "transformer", max_shard_size="40KB")
    shards = sorted((folder / "transformer").glob("*-of-*.safetensors"))
    assert len(shards) > 1
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert hub.check("tiny--wan-tiny", root) == []

    first = shards[0].read_bytes()
    shards[0].unlink()
    shards[-1].write_bytes(shards[-1].read_bytes()[:-1])
    (folder / "vae" / "config.json").write_text("{not json")
    problems = hub.check("tiny--wan-tiny", root)
    assert len(problems) == 2, problems
    assert problems[0] == f"transformer: missing weight shards {shards[0].name}"
    assert problems[1].startswith("vae: AutoencoderKLWan does not load: ")

    shards[0].write_bytes(first)
    (folder / "vae" / "config.json").write_text((tiny_wan / "vae" / "config.json").read_text())
    [problem] = hub.check("tiny--wan-tiny", root)
    assert problem.startswith(f"transformer: {shards[-1].name}: cut short: ")
