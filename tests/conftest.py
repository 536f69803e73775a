"""Test environment: offline hubs, a private cache for the default scene, and shared tiny scenes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "PYTEST_XDIST_WORKER" in os.environ:
    # one worker per core (pytest -n): one thread each, for the worker and the ns-* commands it starts;
    # oversubscribed torch runs several times slower
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

# Test files that share an expensive session fixture run in one worker (pytest-xdist's loadgroup), so it is
# built once; every other file is its own group, which keeps module fixtures to one worker as well.
SHARED_FIXTURE_GROUPS = {"test_ns_splat.py": "trained-runs", "test_viewer.py": "trained-runs",
                         "test_semantic.py": "trained-runs"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group(SHARED_FIXTURE_GROUPS.get(name, name)))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep generated default scenes out of the user's cache."""
    cache = tmp_path_factory.mktemp("unisem_cache")
    old = os.environ.get("UNISEM_CACHE_DIR")
    os.environ["UNISEM_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("UNISEM_CACHE_DIR", None)
    else:
        os.environ["UNISEM_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    """A small synthetic scene (24 views, 64x48) shared by the Nerfstudio tests; treat as read-only."""
    from unisem_ns.data.synthetic_scene import generate_scene

    out = tmp_path_factory.mktemp("scenes") / "tiny"
    generate_scene(out, seed=1, views=24, width=64, height=48, progress=False)
    return out


def copy_scene(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def ns_bin(name: str) -> str:
    """The Nerfstudio executable installed next to this interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable}")
    return str(path)


def run_cli(args, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def ns_train(method: str, scene: Path, out: Path, name: str, iters: int, *extra: str, experiment: str = "s") -> Path:
    """``ns-train <method>`` on ``scene`` (tensorboard, no all-images eval); returns the run folder."""
    proc = run_cli(
        [
            ns_bin("ns-train"), method, "--data", str(scene), "--output-dir", str(out), "--experiment-name", experiment,
            "--timestamp", name, "--max-num-iterations", str(iters), "--vis", "tensorboard",
            "--steps-per-eval-all-images", "0", *extra,
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / experiment / method / name


def train(scene: Path, out: Path, name: str, iters: int, *extra: str) -> Path:
    return ns_train("unisem-splat", scene, out, name, iters, "--steps-per-save", "100", *extra, experiment="e2e")


def evaluate(run: Path) -> dict:
    out = run / "metrics.json"
    proc = run_cli([ns_bin("ns-eval"), "--load-config", str(run / "config.yml"), "--output-path", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())["results"]


@pytest.fixture(scope="session")
def runs(tiny_scene, tmp_path_factory):
    """Three unisem-splat runs on the tiny scene: 1 step, 200 steps, and 200 more resumed from those."""
    pytest.importorskip("nerfstudio")
    out = tmp_path_factory.mktemp("runs")
    untrained = train(tiny_scene, out, "untrained", 1)
    first = train(tiny_scene, out, "first", 200)
    # Nerfstudio counts --max-num-iterations from the loaded step: 200 more after step 199.
    resumed = train(tiny_scene, out, "resumed", 200, "--load-dir", str(first / "nerfstudio_models"))
    return {"untrained": untrained, "first": first, "resumed": resumed}


def make_cue_scene(out: Path, seed: int, views: int, corruption: str = "default") -> Path:
    """A synthetic room at 64x48 with simulated CLIP + SAM cues (MiniLM space, seed 0), for the semantic methods."""
    from unisem_ns.cues.simulator import CueCorruption, simulate_cues
    from unisem_ns.data.synthetic_scene import generate_scene
    from unisem_ns.language.encoders import make_text_encoder

    generate_scene(out, seed=seed, views=views, width=64, height=48, progress=False)
    simulate_cues(out, make_text_encoder("minilm"), CueCorruption.preset(corruption), seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def room_with_cues(tmp_path_factory) -> Path:
    """Seed-0 room (two sofas), 32 views at 64x48, default-corruption cues; shared by the semantic methods' tests
    (econSG writes its cache into econsg/ inside it, which no other test reads)."""
    return make_cue_scene(tmp_path_factory.mktemp("room") / "scene", seed=0, views=32)
