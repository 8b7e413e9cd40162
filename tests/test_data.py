import csv

import numpy as np
import pytest

from headplast.data import get_task, list_tasks, load_split
from headplast.data.loaders import BUNDLED_DIR, CustomData, load_custom
from headplast.data.tokenize import encode, sorted_batches
from headplast.errors import HeadplastError


def test_bundled_rte_sizes_and_hub_label_ids():
    task = get_task("rte")
    train, val = load_split(task, "train"), load_split(task, "validation")
    assert (len(train), len(val)) == (2490, 277)
    assert task.label_names == ("entailment", "not_entailment")  # nyu-mll/glue ids
    raw = open(BUNDLED_DIR / "RTE" / "dev.tsv", encoding="utf-8").read().splitlines()[1:]
    first = raw[0].split("\t")
    assert val.labels[0] == task.label_names.index(first[3])
    assert set(np.unique(train.labels)) == {0, 1}


def test_rows_with_quotes_are_read_unchanged():
    task = get_task("RTE")
    val = load_split(task, "validation")
    lines = open(BUNDLED_DIR / "RTE" / "dev.tsv", encoding="utf-8").read().splitlines()[1:]
    quoted = [i for i, line in enumerate(lines) if '"' in line]
    assert quoted, "the bundled dev set has rows with quote characters"
    for i in quoted:
        fields = lines[i].split("\t")
        assert val.texts[i] == (fields[1], fields[2])
    # default csv quoting would have merged or altered these rows
    with open(BUNDLED_DIR / "RTE" / "dev.tsv", encoding="utf-8") as f:
        naive = list(csv.reader(f, delimiter="\t"))[1:]
    assert len(naive) != len(val) or any(tuple(r[1:3]) != val.texts[i] for i, r in enumerate(naive))


@pytest.mark.parametrize("name,canonical", [("sst2", "SST-2"), ("SST-2", "SST-2"), ("Sts-b", "STS-B"),
                                            ("mnli", "MNLI"), ("cola", "CoLA"), ("rte", "RTE")])
def test_task_names_any_case_and_dash(name, canonical):
    assert get_task(name).name == canonical


def test_registry_has_nine_glue_tasks_with_metrics():
    assert len(list_tasks()) == 9
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("cola").metric == "mcc" and get_task("mrpc").metric == "f1"
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")


def test_unknown_task_lists_tasks_and_suggests():
    with pytest.raises(HeadplastError) as e:
        get_task("rtee")
    assert "RTE" in str(e.value) and "Did you mean" in str(e.value) and "MNLI" in str(e.value)


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(HeadplastError) as e:
        load_split(get_task("mrpc"), "train", data_dir=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "MRPC" / "train.tsv") in msg and "--data-dir" in msg


def test_local_glue_dir_layouts(tmp_path):
    (tmp_path / "MRPC").mkdir()
    (tmp_path / "MRPC" / "dev.tsv").write_text(
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said \"hi\" .\tA \"quote\n",
        encoding="utf-8")
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "dev.tsv").write_text("gj04\t1\t\tThe sailors rode.\ngj04\t0\t*\tRode the.\n")
    mrpc = load_split(get_task("mrpc"), "validation", str(tmp_path))
    assert mrpc.texts[0] == ('He said "hi" .', 'A "quote') and mrpc.labels.tolist() == [1]
    cola = load_split(get_task("cola"), "validation", str(tmp_path))
    assert cola.texts == (("The sailors rode.",), ("Rode the.",)) and cola.labels.tolist() == [1, 0]


def test_custom_files_with_column_mapping(tmp_path):
    tr = tmp_path / "train.csv"
    tr.write_text("premise,hyp,y\na b,c,yes\nd,e f,no\n")
    va = tmp_path / "val.jsonl"
    va.write_text('{"premise": "x", "hyp": "y", "y": "no"}\n')
    cd = CustomData(str(tr), str(va), ("premise", "hyp"), "y")
    train, names = load_custom(cd, "train")
    val, _ = load_custom(cd, "validation")
    assert names == ("no", "yes") and train.labels.tolist() == [1, 0] and val.labels.tolist() == [0]
    with pytest.raises(HeadplastError, match="columns"):
        load_custom(CustomData(str(tr), str(va), ("nope",), "y"), "train")


def test_dynamic_padding_pads_each_batch_to_its_longest(tok, rte):
    task, val = rte
    enc = encode(tok, val.subset(range(40)), 64)
    lengths = enc.lengths()
    seen = []
    for idx, batch in sorted_batches(enc, 8, tok.pad_token_id):
        assert batch["input_ids"].shape[1] == lengths[idx].max()
        seen += list(idx)
    assert sorted(seen) == list(range(40))


def test_holdout_eval_subset_is_kept_out_of_training():
    from headplast.data.subset import make_eval_subset
    from headplast.data.prepare import prepare_data

    d = prepare_data("RTE", eval_source="holdout", eval_size=100, max_train_samples=500)
    sub = make_eval_subset("RTE", "holdout", 100, d.full_train)
    assert sub.split == "train" and sub.size == 100 and not sub.seen_in_training
    assert not set(sub.indices) & set(d.train_indices) and len(d.train) == 500
    plain = prepare_data("RTE", eval_source="train", eval_size=100)
    assert len(plain.train) == 2490  # 'train' draws from training data without removing it
    assert make_eval_subset("RTE", "train", 100, plain.full_train).seen_in_training


def test_eval_subset_is_seeded_and_capped_with_warning():
    from headplast.data.subset import make_eval_subset

    val = load_split(get_task("RTE"), "validation")
    a = make_eval_subset("RTE", "validation", 100, val)
    b = make_eval_subset("RTE", "validation", 100, val)
    assert a == b and len(set(a.indices)) == 100
    with pytest.warns(UserWarning, match="using all"):
        full = make_eval_subset("RTE", "validation", 1024, val)
    assert full.size == 277


def test_tiny_tokenizer_produces_real_tokens(tok):
    ids = tok("ab cd")["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) == 2 + 4  # [CLS] a ##b c ##d [SEP]


def _naive_overlap(eval_words, train_words, ngram=8, min_contained=4):
    """The three overlap kinds by brute force: every pair of examples, word lists compared directly."""
    def inside(a, b):  # a is a contiguous run of b
        return any(list(b[j:j + len(a)]) == list(a) for j in range(len(b) - len(a) + 1)) if a else False

    def grams(w):
        return {tuple(w[j:j + ngram]) for j in range(len(w) - ngram + 1)}

    out = []
    for e in eval_words:
        contained = any(inside(e, t) for t in train_words)
        contains = any(len(t) >= min_contained and inside(t, e) for t in train_words)
        shares = any(grams(e) & grams(t) for t in train_words)
        out.append((contained, contains, shares))
    return out


def test_overlap_kinds_equal_a_brute_force_reference():
    from headplast.data.loaders import Examples
    from headplast.data.overlap import TrainingText, words

    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(12)]

    def ex(n_fields):
        return tuple(" ".join(rng.choice(vocab, rng.integers(1, 14))) for _ in range(n_fields))
    for fields in (1, 2):
        train = [ex(fields) for _ in range(40)]
        evals = [ex(fields) for _ in range(60)]
        evals += [(t[0].split(" ", 1)[-1],) + t[1:] for t in train[:10]]  # phrases of trained examples
        evals += [("zz " + t[0] + " zz",) + t[1:] for t in train[10:20]]  # trained examples inside longer ones
        tt = TrainingText(Examples(tuple(train), np.zeros(len(train)), "train", "t"))
        ours = [tt.kinds(e) for e in evals]
        ref = _naive_overlap([words(e) for e in evals], [words(t) for t in train])
        assert ours == ref
        assert [tt.overlaps(e) for e in evals] == [any(r) for r in ref]
        assert sum(any(r) for r in ref) > 10 and sum(not any(r) for r in ref) > 5  # both kinds present
    # a sequence never spans two text fields: ("a b", "c d") does not contain "b c"
    tt = TrainingText(Examples((("b c d e",),), np.zeros(1), "train", "t"))
    assert not tt.contained(words(("b", "c"))) and tt.contained(words(("b c",)))


def test_sst2_holdout_shares_no_source_text_with_training():
    """GLUE SST-2's train split holds every phrase of each sentence: a random holdout put phrases
    of trained sentences into the measured examples. The holdout is now source-disjoint (checked
    by brute force on a slice), its overlap is recorded, and it keeps its size."""
    from headplast.data.overlap import words
    from headplast.data.prepare import prepare_data
    from headplast.data.subset import make_eval_subset

    d = prepare_data("SST-2", eval_source="holdout", eval_size=300, max_train_samples=600)
    sub = make_eval_subset("SST-2", "holdout", 300, d.full_train, d.train, d.train_indices)
    assert sub.size == 300 and not set(sub.indices) & set(d.train_indices)
    assert sub.overlap["any"] == 0 and not sub.seen_in_training and sub.holdout_rule.startswith("source-disjoint")
    train_w = [words(t) for t in d.train.texts]
    assert not any(any(k) for k in _naive_overlap([words(d.full_train.texts[i]) for i in sub.indices], train_w))
    random_draw = make_eval_subset("SST-2", "holdout", 300, d.full_train)  # how it was drawn before
    leaked = sum(any(k) for k in _naive_overlap([words(d.full_train.texts[i]) for i in random_draw.indices], train_w))
    assert leaked > 10  # the flaw this fixes
    val = make_eval_subset("SST-2", "validation", 300, d.validation, d.train, d.train_indices)
    assert val.overlap["examples"] == 300 and val.seen_in_training == (val.overlap["any"] > 0)
