#!/usr/bin/env python3
"""Build a real labelled image set in mini-ImageNet format from the emoji artwork on npm.

Source: `emoji-datasource@16.0.0` (package/emoji.json: category, subcategory, image file name,
`has_img_<vendor>`) and `emoji-datasource-{apple,google,twitter,facebook}@16.0.0` (64-px RGBA
PNGs under package/img/<vendor>/64/<image>), read straight from their npm tarballs in CACHE
(`scripts/real_emoji.sh` fetches them with `npm pack`). These are real drawings by four design
teams, labelled by Unicode's emoji subcategories (animal-mammal, food-fruit, transport-ground,
...): the classes are semantic and each class holds many different objects drawn in four styles.

The definition below was fixed before any training run and is not to be tuned:
- one class per `subcategory`; instances: every (emoji, vendor) pair with `has_img_<vendor>`
  true, base emoji only (emoji.json keeps skin-tone variations under the base entry's
  `skin_variations` key; they are not used);
- excluded: every subcategory of category "Flags", and the text-like "keycap" and "alphanum";
- classes with at least 40 instances are kept, each capped at 120 instances drawn with one
  `random.Random(0)` (classes visited in sorted order, instances sorted) so no class dominates;
- the kept classes, sorted by name and shuffled with `random.Random(0)`, are split into
  train / val / test = 64 % / 16 % / 20 % of the classes (test = max(5, round(0.2 n)),
  val = round(0.16 n), train = the rest; taken in that order test, val, train from the shuffled
  list), disjoint, as mini-ImageNet's base / validation / novel classes;
- each RGBA image is alpha-composited over mid-grey (128, 128, 128) and written as a 64 x 64 RGB
  PNG OUT/images/<class>_<unified>_<vendor>.png (every part reduced to [A-Za-z0-9_-]).

Writes OUT/images/*.png, OUT/{train,val,test}.csv (header `filename,label`, filename relative to
OUT/images, label = the subcategory name as in emoji.json, classes in sorted blocks) and
OUT/summary.json; prints the summary (without class names) as one JSON line.

    python3 scripts/emoji_dataset.py CACHE OUT
"""

import collections
import io
import json
import os
import random
import re
import sys
import tarfile

from PIL import Image

VERSION = "16.0.0"
VENDORS = ["apple", "google", "twitter", "facebook"]
EXCLUDED_CATEGORIES = {"Flags"}
EXCLUDED_SUBCATEGORIES = {"keycap", "alphanum"}
MIN_PER_CLASS = 40
MAX_PER_CLASS = 120
SIZE = 64
BACKGROUND = (128, 128, 128)
SPLIT_ORDER = ["train", "val", "test"]


def safe(name):
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def tarball(cache, name):
    path = os.path.join(cache, f"{name}-{VERSION}.tgz")
    if not os.path.isfile(path):
        sys.exit(f"missing {path} (run scripts/real_emoji.sh, which fetches it with npm pack)")
    return path


def select(emoji):
    """The class -> sorted [(vendor, image, unified)] of the dataset definition."""
    per_class = collections.defaultdict(list)
    for e in emoji:
        if e["category"] in EXCLUDED_CATEGORIES or e["subcategory"] in EXCLUDED_SUBCATEGORIES:
            continue
        for v in VENDORS:
            if e.get(f"has_img_{v}"):
                per_class[e["subcategory"]].append((v, e["image"], e["unified"]))
    rng = random.Random(0)
    classes = {}
    for c in sorted(per_class):
        items = sorted(per_class[c])
        if len(items) < MIN_PER_CLASS:
            continue
        if len(items) > MAX_PER_CLASS:
            items = sorted(rng.sample(items, MAX_PER_CLASS))
        classes[c] = items
    return classes


def split(names):
    names = sorted(names)
    random.Random(0).shuffle(names)
    n_test = max(5, round(0.20 * len(names)))
    n_val = round(0.16 * len(names))
    out = {
        "test": names[:n_test],
        "val": names[n_test:n_test + n_val],
        "train": names[n_test + n_val:],
    }
    assert all(out.values()), f"too few classes ({len(names)}) for three splits"
    return out


def composite(data):
    rgba = Image.open(io.BytesIO(data)).convert("RGBA")
    if rgba.size != (SIZE, SIZE):
        rgba = rgba.resize((SIZE, SIZE), Image.LANCZOS)
    return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    cache, out = sys.argv[1], sys.argv[2]
    with tarfile.open(tarball(cache, "emoji-datasource")) as t:
        emoji = json.load(t.extractfile("package/emoji.json"))
    classes = select(emoji)
    splits = split(classes)
    for c in classes:
        assert "," not in c and c.strip() == c, f"label {c!r} does not fit the csv"

    # vendor -> member path -> [(class, output file name)]
    wanted = collections.defaultdict(lambda: collections.defaultdict(list))
    names = {}
    for c, items in classes.items():
        for v, img, uni in items:
            name = f"{safe(c)}_{safe(uni)}_{v}.png"
            assert name not in names.values(), f"duplicate file name {name}"
            names[(c, v, img)] = name
            wanted[v][f"package/img/{v}/64/{img}"].append(name)

    images = os.path.join(out, "images")
    os.makedirs(images, exist_ok=True)
    for v in VENDORS:
        todo = dict(wanted[v])
        # one sequential pass: seeking backwards in a .tgz re-decompresses from the start
        with tarfile.open(tarball(cache, f"emoji-datasource-{v}"), "r|gz") as t:
            for m in t:
                if m.name in todo:
                    rgb = composite(t.extractfile(m).read())
                    for name in todo.pop(m.name):
                        rgb.save(os.path.join(images, name))
        assert not todo, f"{v}: {len(todo)} images not in the tarball, e.g. {next(iter(todo))}"

    counts = [len(v) for v in classes.values()]
    summary = {
        "source": f"npm emoji-datasource{{,-apple,-google,-twitter,-facebook}}@{VERSION}",
        "image_size": SIZE,
        "classes": len(classes),
        "images": sum(counts),
        "min_per_class": min(counts),
        "max_per_class": max(counts),
        "splits": {},
    }
    for s in SPLIT_ORDER:
        cls = sorted(splits[s])
        with open(os.path.join(out, f"{s}.csv"), "w") as f:
            f.write("filename,label\n")
            for c in cls:
                for v, img, _ in classes[c]:
                    f.write(f"{names[(c, v, img)]},{c}\n")
        n = [len(classes[c]) for c in cls]
        summary["splits"][s] = {
            "classes": len(cls), "images": sum(n), "min_per_class": min(n),
            "max_per_class": max(n), "class_names": cls,
        }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    line = dict(summary)
    line["splits"] = {s: {k: x for k, x in d.items() if k != "class_names"}
                      for s, d in summary["splits"].items()}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
