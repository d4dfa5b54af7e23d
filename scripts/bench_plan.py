"""The plan's cost model against a finished search's measured costs, trial by trial.

    python scripts/bench_plan.py --run RUN --json reports/plan-miniature.json

Builds `compress search --plan`'s cost model for the run's space and model on this machine
(CPU rates measured now: run it with the machine to itself, as the search was), then for every
trial of RUN compares:

- training: seconds per update of each training transform it trained (its prefix-cache
  misses), against the model's price of one update of that transform on that student;
- evaluation: its paired timing plus its scored images (the ledger's timing and evaluation
  seconds), against the model's rounds x (candidate + baseline) + images x candidate.

Writes the device's measured rates and every comparison with the recipe it priced, so that
tests/search/test_plan.py can re-price the same recipes with the same rates and hold the model
within 2x of what was measured.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from compress.recipe import load_recipe
    from compress.search.config import resume_config
    from compress.search.ledger import read_records, trial_dir
    from compress.search.plan import cost_model, measured_costs, predicted_costs

    load = os.getloadavg()
    cfg, space = resume_config(args.run)
    model = cost_model(cfg, space)
    rows: list[dict[str, Any]] = []
    for r in read_records(args.run):
        path = trial_dir(args.run, r.number) / "recipe.yaml"
        if r.state not in ("complete", "stopped") or not path.is_file() or r.duplicate_of:
            continue
        recipe = load_recipe(path)
        measured = measured_costs(r)
        predicted = predicted_costs(model, recipe, measured)
        rows.append(
            {
                "trial": r.number,
                "recipe": recipe.model_dump(mode="json", include={"name", "transforms"}),
                "measured": measured,
                "predicted": predicted,
            }
        )
        parts = ", ".join(
            f"{k} {predicted[k]:.3g}/{measured[k]:.3g} s" for k in measured if k in predicted
        )
        print(f"trial {r.number:>3}: predicted/measured {parts}")
    out = {
        "command": f"python scripts/bench_plan.py --run {args.run}",
        "load": load,
        "device": {
            "name": model.device.name,
            "memory": model.device.memory,
            "rates": model.device.rates,
            "source": model.device.source,
        },
        "settings": {"evaluation": model.settings, "baseline": model.baseline},
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
