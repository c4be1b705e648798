"""Write src/pvtkit/data/imagenet_1k_labels.json: the 1000 ImageNet-1k class names in class-index order.

The names are the WordNet lemmas of the ILSVRC-2012 synsets (what transformers' ImageNet checkpoints carry in
`id2label`). They are read from the synset lists timm ships as package data, so run this where timm is installed:

    python scripts/make_imagenet_labels.py
"""

import json
from importlib import resources
from pathlib import Path

info = resources.files("timm") / "data" / "_info"
synsets = (info / "imagenet_synsets.txt").read_text().split()
lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines() if line)
labels = [lemmas[s].strip() for s in synsets]
assert len(labels) == 1000, len(labels)
out = Path(__file__).resolve().parent.parent / "src" / "pvtkit" / "data" / "imagenet_1k_labels.json"
out.write_text(json.dumps(labels, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
print(f"wrote {len(labels)} labels to {out}")
