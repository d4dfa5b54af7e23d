"""The model card every artifact carries: `README.md` in the Hugging Face Hub's convention (YAML
front matter: base model, library, tags), with the recipe, its measured scores and how to load
it; and `push`, which uploads an artifact folder to the Hub (huggingface_hub)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from compress.errors import CompressError

if TYPE_CHECKING:
    from compress.recipe import Recipe

CARD_FILE = "README.md"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def card_text(recipe: Recipe, notes: list[str]) -> str:
    """The card: front matter, the transforms, the measured scores, how to load (`notes`)."""
    kinds = [t.kind for t in recipe.transforms]
    meta: dict[str, Any] = {
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "tags": ["compress", "text-to-image", *dict.fromkeys(kinds)],
    }
    source = recipe.provenance.source_model
    if source and _HUB_ID.match(source) and not Path(source).exists():
        meta["base_model"] = source  # the Hub links a repo id, not a local folder
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {recipe.name}",
        "",
        recipe.description or f"{source or 'A diffusion pipeline'} compressed by compress.",
        "",
    ]
    lora = recipe.provenance.fused_lora
    if lora is not None:
        lines += [
            f"The LoRA `{lora.file}` (sha256 `{lora.sha256}`) was fused into the base weights at "
            f"scale {lora.scale} before the transforms: it is part of this model.",
            "",
        ]
    lines += ["## Recipe", "", "| # | transform | settings |", "|---|---|---|"]
    for i, t in enumerate(recipe.transforms):
        fields = t.model_dump(exclude={"kind"}, exclude_defaults=True, mode="json")
        text = ", ".join(f"{k}={v}" for k, v in fields.items()) or "defaults"
        lines.append(f"| {i + 1} | `{t.kind}` | {text} |")
    lines += ["", "## Measured", "", *_scores(recipe), "", "## How to load", ""]
    lines += [f"- {n}" for n in notes]
    lines += [
        "",
        "```python",
        "import compress",
        "",
        'pipe = compress.load("REPO_OR_FOLDER")',
        "```",
        "",
        f"The full recipe is in `recipe.yaml`; made with compress {_version(recipe)}.",
    ]
    return "\n".join(lines) + "\n"


def _scores(recipe: Recipe) -> list[str]:
    s = recipe.scores
    if s is None or (s.speedup is None and s.quality is None and s.latency_ms is None):
        return ["Not measured when this folder was written (`compress eval`, `compress bench`)."]
    out = []
    if s.speedup is not None:
        ci = f" [95% interval {s.speedup_ci[0]:.2f}, {s.speedup_ci[1]:.2f}]" if s.speedup_ci else ""
        out.append(f"- paired speed-up over the uncompressed model: {s.speedup:.2f}x{ci}")
    if s.latency_ms is not None:
        out.append(f"- latency: {s.latency_ms:.1f} ms (median)")
    if s.quality is not None:
        name = " ".join(x for x in (s.quality_metric, s.quality_metric_version) if x)
        out.append(f"- quality: {s.quality:.4f} ({name or 'metric not recorded'})")
    if s.settings:
        settings = ", ".join(f"{k}={v}" for k, v in sorted(s.settings.items()))
        out.append(f"- measured with: {settings}")
    return out


def _version(recipe: Recipe) -> str:
    return recipe.provenance.versions.get("compress", "(version not recorded)")


def push(folder: str | Path, repo: str, *, private: bool = False) -> str:
    """Upload the artifact `folder` (card included) to the Hub model repo `repo`; its URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not (folder / "recipe.yaml").is_file():
        raise CompressError(
            f"{folder} is not an artifact of compress apply or export (no recipe.yaml)"
        )
    if not _HUB_ID.match(repo):
        raise CompressError(f"{repo!r} is not a Hub repository id; write it as OWNER/NAME")
    if get_token() is None:
        raise CompressError(
            "no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (write access)"
        )
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model")
    except HfHubHTTPError as exc:
        raise CompressError(f"the Hub refused the push to {repo}: {exc}") from None
    except Exception as exc:  # the network library's own errors: unreachable, offline mode
        raise CompressError(
            f"cannot reach the Hugging Face Hub to push {folder} to {repo} "
            f"({type(exc).__name__}: {exc}); nothing was changed: push again when online"
        ) from None
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}")
