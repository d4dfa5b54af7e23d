"""The miniature's fixed evaluation prompts and seeds, and its default sampling call."""

from __future__ import annotations

# Bump the version whenever a prompt or seed changes: scores of different versions do not compare.
PROMPT_SET_VERSION = "miniature-prompts-2"

# 48 prompts drawn once from uniform attributes (so generated images follow the real distribution
# the Frechet distance compares against); every third names all four attributes, the rest leave
# some open.
EVAL_PROMPTS: list[str] = [
    "a small red eight on a green background",
    "a red handwritten digit on a black background",
    "a handwritten digit zero on a blue background",
    "a large red six on a yellow background",
    "a large three",
    "a large digit four on a yellow background",
    "a large red digit zero on a green background",
    "a large green three on a yellow background",
    "the small number six on a green background",
    "a small red three on a yellow background",
    "a small digit eight",
    "a handwritten digit seven",
    "the small yellow number seven on a blue background",
    "a small digit nine on a blue background",
    "a small digit seven on a black background",
    "a small yellow digit one on a green background",
    "a large yellow eight",
    "a handwritten digit six on a white background",
    "a small green zero on a red background",
    "a large digit two on a black background",
    "a small digit one on a yellow background",
    "the small red number nine on a green background",
    "a small red seven on a green background",
    "a small digit nine",
    "the small blue number two on a green background",
    "the number six on a black background",
    "the large number six",
    "a large red digit seven on a blue background",
    "a large red digit one",
    "a yellow five on a red background",
    "a large black six on a red background",
    "a large white handwritten digit on a red background",
    "a handwritten digit six on a green background",
    "the large blue number four on a green background",
    "a red four on a yellow background",
    "the large white number three on a black background",
    "the small black number one on a red background",
    "a large white two",
    "the black number one on a red background",
    "a small blue digit two on a black background",
    "a red eight on a black background",
    "a white digit five on a yellow background",
    "a small green digit zero on a white background",
    "a red digit four on a blue background",
    "the red number two",
    "the large green number six on a black background",
    "a small green eight on a white background",
    "a large white zero",
]
EVAL_SEEDS: list[int] = [1000 + i for i in range(len(EVAL_PROMPTS))]

DEFAULT_SCHEDULER = "dpmsolver++"  # a key of compress.transforms.runtime.sampler.SCHEDULERS
DEFAULT_CALL: dict[str, float | int] = {"num_inference_steps": 20, "guidance_scale": 4.0}
