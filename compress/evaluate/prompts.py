"""Fixed prompt sets: a general set, user prompt files, and the HPSv2 benchmark's four styles."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from compress.errors import CompressError

GENERAL_VERSION = "general-1"
# Subjects, counts, colours, spatial relations and styles, so that degradation of any kind shows.
GENERAL_PROMPTS = [
    "a photo of a red fox sitting in fresh snow",
    "a bowl of ramen with a soft boiled egg, studio lighting",
    "an oil painting of a lighthouse on a cliff during a storm",
    "a watercolor illustration of a hummingbird next to a hibiscus flower",
    "a portrait photo of an elderly man with a grey beard, 85mm lens",
    "a city street at night in the rain with neon signs reflected in puddles",
    "three green apples on a wooden table",
    "a blue bicycle leaning against a yellow wall",
    "an astronaut riding a horse on the moon, digital art",
    "a cozy living room with a fireplace and a sleeping cat",
    "a mountain lake at sunrise with mist over the water",
    "a pixel art castle on a floating island",
    "a close-up photo of a honeybee on a sunflower",
    "a steaming cup of coffee next to an open book",
    "an anime girl with short silver hair in a school uniform",
    "a vintage red car parked in front of a diner",
    "a knight in shining armor holding a banner, concept art",
    "a plate of sushi arranged on a black slate",
    "a golden retriever puppy playing with a tennis ball on grass",
    "a futuristic skyscraper made of glass and plants",
    "a pencil sketch of an old oak tree",
    "two cats sitting on a windowsill looking outside",
    "a sailboat on a calm sea under a pink sky",
    "a still life of lemons and a blue vase, in the style of Cezanne",
    "a snowy village with warm lights in the windows at dusk",
    "a robot chef cooking pancakes in a small kitchen",
    "an aerial photo of a winding river through a green valley",
    "a macro photo of a dew drop on a spider web",
    "a medieval market square crowded with people, oil painting",
    "a polar bear on an ice floe under the northern lights",
    "a chocolate cake with strawberries on top",
    "a teddy bear sitting on a park bench in autumn leaves",
    "a desert landscape with a single cactus and a full moon",
    "a 3d render of a cute dragon made of clay",
    "a wooden cabin in a pine forest covered in snow",
    "a black and white photo of a jazz musician playing saxophone",
    "a bouquet of tulips in a glass jar on a windowsill",
    "a tiger walking through tall grass, wildlife photography",
    "a small boat on a river in a narrow canal city",
    "a stained glass window depicting a peacock",
    "a red umbrella in a crowd of black umbrellas",
    "a cup of matcha latte with leaf latte art, top view",
    "a steam locomotive crossing a stone bridge",
    "an owl perched on a branch at night with a full moon behind it",
    "a colorful hot air balloon festival over farmland",
    "a child's drawing of a house with a sun and a tree",
    "a sports car speeding along a coastal road, motion blur",
    "a mushroom forest glowing with bioluminescent light, fantasy art",
]


def seeds_for(n: int, offset: int = 0) -> list[int]:
    return [offset + i for i in range(n)]


def first(prompts: list[str], n: int | None, what: str) -> list[str]:
    """The first `n` prompts (all when None); asking for more than exist is an error."""
    if n is None:
        return list(prompts)
    if n > len(prompts):
        raise CompressError(f"{what} has {len(prompts)} prompts; --num-prompts {n} is too many")
    return list(prompts[:n])


def load_prompt_file(path: str | Path) -> tuple[list[str], str]:
    """Prompts from a .txt (one per line) or .json (list of strings); returns them and a version."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CompressError(
            f"prompt file {path} does not exist (a .txt, one prompt a line, or "
            ".json list of strings)"
        )
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise CompressError(f"{path} must hold a JSON list of prompt strings")
        prompts = data
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise CompressError(f"{path} holds no prompts")
    return prompts, f"{path.stem}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


HPS_STYLES = ("anime", "concept-art", "paintings", "photo")


def hps_benchmark(folder: str | Path) -> tuple[list[str], list[str], str]:
    """HPSv2 benchmark prompts (HPDv2 `benchmark/{style}.json`), styles interleaved.

    Returns (prompts, styles, version). Interleaving (anime 0, concept-art 0, paintings 0, photo 0,
    anime 1, ...) keeps every style equally represented in any first-N subset.
    """
    folder = Path(folder).expanduser()
    missing = [s for s in HPS_STYLES if not (folder / f"{s}.json").is_file()]
    if missing:
        raise CompressError(
            f"HPSv2 benchmark prompts missing from {folder}: "
            f"{', '.join(m + '.json' for m in missing)}. Put the four files of the HPDv2 dataset's "
            "benchmark/ folder (huggingface.co/datasets/zhwang/HPDv2) there and pass the folder "
            "with --prompts DIR or COMPRESS_HPS_PROMPTS=DIR"
        )
    per_style: dict[str, list[str]] = {}
    digest = hashlib.sha256()
    for style in HPS_STYLES:
        raw = (folder / f"{style}.json").read_bytes()
        digest.update(raw)
        data = json.loads(raw)
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise CompressError(f"{folder / (style + '.json')} must be a JSON list of prompts")
        per_style[style] = data
    prompts, styles = [], []
    for i in range(max(len(v) for v in per_style.values())):
        for style in HPS_STYLES:
            if i < len(per_style[style]):
                prompts.append(per_style[style][i])
                styles.append(style)
    return prompts, styles, f"hpdv2-benchmark-{digest.hexdigest()[:8]}"
