"""Sample batches for the demo, tests and benchmark: both modes, optional invalid lines.

``python -m ops.sample --jobs 220 --invalid 6 > demo.jsonl`` writes a deterministic file.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import sys
from collections.abc import Iterator
from typing import Any

from PIL import Image

SIZES = ("1280*1280", "1024*1024", "800*1200", "1200*800", "960*1280", "1280*720")
PROMPTS = (
    "turn it into a watercolor painting",
    "make the sky a dramatic sunset",
    "render the scene as a pencil sketch",
    "place the subject on a snowy mountain",
    "把这张照片变成水彩画",
)

# Each invalid line breaks one rule, and carries the code the provider would answer with.
INVALID: tuple[tuple[str, dict[str, Any]], ...] = (
    ("001021008", {"images": 0}),
    ("001021011", {"parameters": {"n": 7}}),
    ("001021015", {"parameters": {"size": "1024x1024"}}),
    ("001021017", {"parameters": {"size": "2000*300"}}),
    ("001021006", {"text": ""}),
    ("001021010", {"interleave": True, "parameters": {"n": 2}}),
)


def image_url(i: int) -> str:
    return f"https://images.example.com/ref/{i:06d}.jpg"


def data_uri(seed: int) -> str:
    """A small real JPEG as a data URI: exercises Pillow checks without a network."""
    color = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
    buf = io.BytesIO()
    Image.new("RGB", (400, 400), color).save(buf, "JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def request(i: int, rng: random.Random, interleave: bool, inline_image: bool = False) -> dict:
    images = rng.randint(0, 1) if interleave else rng.randint(1, 3)
    content: list[dict[str, str]] = [{"text": f"{rng.choice(PROMPTS)} (#{i})"}]
    for k in range(images):
        content.append({"image": data_uri(i) if inline_image and k == 0 else image_url(i * 4 + k)})
    params: dict[str, Any] = {"size": rng.choice(SIZES), "seed": rng.randint(0, 2**31 - 1)}
    if interleave:
        params.update(enable_interleave=True, max_images=rng.randint(1, 3))
    else:
        params.update(n=rng.choice((1, 1, 2)), prompt_extend=rng.random() < 0.5)
    return {
        "model": "wan26_i2i",
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": params,
    }


def broken(i: int, rng: random.Random, code: str, change: dict[str, Any]) -> dict:
    interleave = bool(change.get("interleave"))
    body = request(i, rng, interleave)
    content = body["input"]["messages"][0]["content"]
    if "images" in change:
        del content[1:]
    if "text" in change:
        content[0]["text"] = change["text"]
    body["parameters"].update(change.get("parameters", {}))
    return body


def lines(
    jobs: int,
    invalid: int = 0,
    interleave_share: float = 0.3,
    seed: int = 7,
    inline_images: int = 3,
) -> Iterator[dict]:
    rng = random.Random(seed)
    bad_at = {
        round((k + 1) * jobs / (invalid + 1)): INVALID[k % len(INVALID)] for k in range(invalid)
    }
    for i in range(jobs):
        custom_id = f"job-{i:06d}"
        if i in bad_at:
            code, change = bad_at[i]
            yield {"custom_id": f"bad-{code}-{i}", "body": broken(i, rng, code, change)}
            continue
        interleave = rng.random() < interleave_share
        yield {
            "custom_id": custom_id,
            "body": request(i, rng, interleave, inline_image=i < inline_images),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=220)
    parser.add_argument("--invalid", type=int, default=0)
    parser.add_argument("--interleave-share", type=float, default=0.3)
    parser.add_argument("--inline-images", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    for line in lines(
        args.jobs, args.invalid, args.interleave_share, args.seed, args.inline_images
    ):
        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
