"""How much of an eval example a model may have seen in training, by its words.

GLUE SST-2's train split holds every phrase of each treebank sentence, so a random holdout puts
phrases and their parent sentences on both sides of a train/holdout split. An eval example
overlaps the training examples when
- it is contained in one (a phrase of a trained sentence; word sequences, lowercased),
- it contains one of at least MIN_CONTAINED words (a trained phrase inside it; shorter
  sequences are common language, not a shared source sentence, and one of 8 or more words is
  caught by the next rule), or
- it shares a sequence of NGRAM words with one.
Text fields of an example are kept apart (no sequence crosses from one field to the next).
"""

from __future__ import annotations

from headplast.data.loaders import Examples

NGRAM = 8
MIN_CONTAINED = 4
RULE = f"contained in, containing (>= {MIN_CONTAINED} words) or sharing {NGRAM} words with a training example"
KINDS = ("contained_in_training", "contains_training", f"shares_{NGRAM}_words")
_FIELD = "\x1f"  # between text fields: never a word, so no sequence spans two fields


def words(example: tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for i, field in enumerate(example):
        if i:
            out.append(_FIELD)
        out += field.lower().split()
    return tuple(out)


class TrainingText:
    """The training examples' word sequences, indexed for the three overlap tests."""

    def __init__(self, train: Examples):
        seqs = [words(t) for t in train.texts]
        self.ngrams = {w[j:j + NGRAM] for w in seqs for j in range(len(w) - NGRAM + 1)}
        self.short = {w for w in seqs if MIN_CONTAINED <= len(w) < NGRAM}
        self.long = {w for w in seqs if len(w) >= NGRAM}
        # every word between spaces, examples apart (" a b \n c "): containment is one substring test
        self.joined = " " + " \n ".join(" ".join(w) for w in seqs) + " "

    def contained(self, w: tuple[str, ...], shared: bool | None = None) -> bool:
        """A substring test over every training example; one of NGRAM words or more can only be
        contained where it shares an NGRAM-word sequence (`shared`, if known), tested first."""
        if not w or (len(w) >= NGRAM and not (self.shares(w) if shared is None else shared)):
            return False
        return f" {' '.join(w)} " in self.joined

    def contains(self, w: tuple[str, ...], shared: bool | None = None) -> bool:
        """A training example of MIN_CONTAINED words or more inside w; one of NGRAM words or more
        only where w shares an NGRAM-word sequence (`shared`, if known)."""
        if any(w[j:j + n] in self.short for n in range(MIN_CONTAINED, NGRAM) for j in range(len(w) - n + 1)):
            return True
        if not (self.shares(w) if shared is None else shared):
            return False
        return any(w[j:j + n] in self.long for n in range(NGRAM, len(w) + 1) for j in range(len(w) - n + 1))

    def shares(self, w: tuple[str, ...]) -> bool:
        return any(w[j:j + NGRAM] in self.ngrams for j in range(len(w) - NGRAM + 1))

    def kinds(self, example: tuple[str, ...]) -> tuple[bool, bool, bool]:
        w = words(example)
        shared = self.shares(w)
        return self.contained(w, shared), self.contains(w, shared), shared

    def overlaps(self, example: tuple[str, ...]) -> bool:
        w = words(example)
        shared = self.shares(w)
        return shared or self.contains(w, shared) or self.contained(w, shared)


def overlap_report(examples: Examples, training: TrainingText, n_train: int) -> dict:
    """Counts of eval examples overlapping the training examples, by kind and in all."""
    flags = [training.kinds(t) for t in examples.texts]
    counts = {k: sum(f[i] for f in flags) for i, k in enumerate(KINDS)}
    n_any = sum(any(f) for f in flags)
    return {"rule": RULE, "examples": len(flags), "training_examples": n_train, **counts, "any": n_any,
            "fraction": n_any / len(flags) if flags else 0.0}
