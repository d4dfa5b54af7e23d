"""The miniature's fixed evaluation prompts and seeds, and its default sampling call."""

from __future__ import annotations

# Bump the version whenever a prompt or seed changes: scores of different versions do not compare.
PROMPT_SET_VERSION = "miniature-prompts-1"

# 48 prompts drawn once from uniform attributes (so generated images follow the real distribution
# the Frechet distance compares against); 16 name all four attributes, the rest leave some open.
EVAL_PROMPTS: list[str] = [
    "a white three on a green background",
    "a black digit five",
    "the black number two in the top right",
    "a handwritten nine",
    "a red digit zero in the bottom left",
    "a yellow number on a red background in the bottom left corner",
    "a white four",
    "a red digit one on a white background in the bottom right corner",
    "the number six in the bottom right",
    "a green eight on a blue background in the bottom left corner",
    "a white digit nine on a blue background in the top right",
    "the red number one",
    "a blue five on a black background",
    "a red digit two on a white background in the bottom right corner",
    "the red number six on a yellow background in the bottom left",
    "a red four on a yellow background in the top left corner",
    "a red digit zero on a yellow background in the top right",
    "the red number seven on a yellow background in the top left corner",
    "a yellow three on a red background in the top right",
    "a white digit eight on a blue background",
    "the yellow number seven in the top left",
    "a white digit on a black background in the bottom left corner",
    "a black digit five on a yellow background",
    "the white number six on a blue background in the top right corner",
    "a white one on a red background",
    "a green digit eight on a yellow background in the top right corner",
    "the number zero",
    "a white two on a yellow background",
    "a handwritten digit four on a red background in the top left",
    "the blue number three",
    "a green six on a black background in the top left",
    "a handwritten digit four on a black background in the bottom right corner",
    "the number five",
    "a handwritten seven in the bottom left corner",
    "a handwritten digit one in the top left",
    "the black number eight",
    "a red zero on a green background",
    "a handwritten digit nine on a black background in the bottom right corner",
    "the number two",
    "a black three on a white background in the top left corner",
    "a white digit nine",
    "the number zero in the bottom right corner",
    "a black three on a green background in the bottom left",
    "a white digit seven on a red background",
    "the blue number one on a green background in the top left",
    "a green five in the bottom left corner",
    "a handwritten digit eight on a green background in the bottom left",
    "the blue number two on a yellow background in the top left corner",
]
EVAL_SEEDS: list[int] = [1000 + i for i in range(len(EVAL_PROMPTS))]

DEFAULT_SCHEDULER = "dpmsolver++"  # a key of compress.transforms.sampler.SCHEDULERS
DEFAULT_CALL: dict[str, float | int] = {"num_inference_steps": 20, "guidance_scale": 4.0}
