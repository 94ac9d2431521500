"""MNIST with captions: the grammar and its vocabulary, the held-out captions, the generated canvases, their
cache, and the digit classifier and caption checker that score generated images."""
from functools import partial

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from drawnet import DrawnetError
from drawnet import captions, data
from drawnet.captions import (HELD_OUT, MAX_WORDS, VOCAB, Layout, all_captions, caption_agreement, decode_caption,
                              encode_captions, held_out_captions, mnist_captions, parse_caption, training_captions)

LOW, MIDDLE, HIGH, ANY = (0, 4), (14, 18), (28, 32), (0, 32)


@pytest.fixture(scope="module")
def mnist():
    return data.mnist_arrays()


@pytest.fixture(scope="module")
def classifier():
    """A digit classifier trained for fewer steps than the default (about 98 % instead of 99 %), to stay quick."""
    return captions.train_digit_classifier(steps=800)


def _texts(words) -> list:
    return [decode_caption(w) for w in words]


def _paste_reference(digits, positions):
    """The canvas the slow, obvious way: add each digit [784] at its top-left (row, col), clip to 1."""
    canvas = np.zeros((60, 60), np.float32)
    for digit, (r, c) in zip(digits, positions):
        canvas[r : r + 28, c : c + 28] += digit.reshape(28, 28)
    return np.minimum(canvas, 1)


# --- grammar and vocabulary ---

def test_the_grammar_makes_450_captions_that_parse_and_encode():
    texts = all_captions()
    assert len(texts) == len(set(texts)) == 450 and texts == all_captions()
    layouts = [parse_caption(t) for t in texts]
    assert [len(layout.digits) for layout in layouts] == [1] * 90 + [2] * 360
    assert {w for t in texts for w in t.split()} == set(VOCAB[1:]) and VOCAB[0] == "<pad>"
    assert MAX_WORDS == max(len(t.split()) for t in texts) == 11
    for layout in layouts:
        assert len(set(layout.digits)) == len(layout.digits)  # two digits differ
        for ranges in layout.rows + layout.cols:
            assert ranges in (LOW, MIDDLE, HIGH, ANY)
    assert parse_caption("the digit 3 is at the top right of the image") == Layout((3,), (LOW,), (HIGH,), None)
    assert parse_caption("the digit 5 is at the center of the image") == Layout((5,), (MIDDLE,), (MIDDLE,), None)
    assert parse_caption("the digit 7 is on the left of the digit 1") == Layout((7, 1), (ANY, ANY), (LOW, HIGH), "left")
    assert parse_caption("the digit 0 is at the bottom of the digit 9") == Layout((0, 9), (HIGH, LOW), (ANY, ANY),
                                                                                  "bottom")
    # Case and spacing are free; the words are what count.
    assert parse_caption("  The Digit 2 is AT the bottom  of the image ") == parse_caption(
        "the digit 2 is at the bottom of the image")


def test_encoding_round_trips_and_pads_with_zero():
    texts = list(all_captions())
    ids = encode_captions(texts)
    assert ids.shape == (450, MAX_WORDS) and ids.dtype == torch.long
    assert _texts(ids) == texts
    short = encode_captions(["the digit 4 is at the top of the image"])[0]
    assert short[:10].tolist() == [VOCAB.index(w) for w in "the digit 4 is at the top of the image".split()]
    assert short[10:].tolist() == [0]
    assert decode_caption([VOCAB.index("digit"), 0, VOCAB.index("7"), 0]) == "digit 7"


@pytest.mark.parametrize("text, match", [
    ("", "empty caption"),
    ("   ", "empty caption"),
    ("the digit 3 is at the top of the picture", "unknown word 'picture'"),
    ("the digit 12 is at the top of the image", "unknown word '12'"),
    ("the <pad> 3", "unknown word '<pad>'"),
    ("the digit 3 is at the top of the image of the image", "13 words, at most 11"),
])
def test_bad_words_are_one_line_errors_that_list_the_vocabulary(text, match):
    for call in (lambda: encode_captions([text]), lambda: parse_caption(text)):
        with pytest.raises(DrawnetError, match=match) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "the vocabulary is: the digit is at on of image" in message


@pytest.mark.parametrize("text", ["the digit 7 is at the top of the digit 7", "digit the 7",
                                  "the digit 3 is at the center of the digit 5", "the digit 3 is at the top left",
                                  "the digit 3 is on the top of the image",
                                  "the digit 3 is at the left of the digit 5"])
def test_captions_outside_the_grammar_are_one_line_errors_with_an_example(text):
    encode_captions([text])  # every word is known ...
    with pytest.raises(DrawnetError, match="not a caption this data set knows") as info:
        parse_caption(text)  # ... but the grammar never says this
    assert "\n" not in str(info.value) and "e.g. 'the digit 3 is at the top left of the image'" in str(info.value)


def test_decoding_an_unknown_id_is_an_error():
    with pytest.raises(DrawnetError, match=f"word id {len(VOCAB)} is out of range"):
        decode_caption([1, len(VOCAB)])


def test_a_tenth_of_each_kind_of_caption_is_held_out():
    held = held_out_captions()
    assert held == sorted(HELD_OUT) and len(held) == 45 and set(held) < set(all_captions())
    kinds = [len(parse_caption(t).digits) for t in held]
    assert kinds.count(1) == 9 and kinds.count(2) == 36
    train = training_captions()
    assert len(train) == 405 and not set(train) & HELD_OUT and set(train) | HELD_OUT == set(all_captions())
    assert captions._held_out() == HELD_OUT  # a fixed seed: the same every time


# --- the canvases ---

def test_canvases_have_the_documented_shapes_and_kinds(mnist):
    out = mnist_captions(mnist["valid_x"], mnist["valid_y"], n=41, seed=0, captions=training_captions())
    assert out.images.shape == (41, 1, 60, 60) and out.images.dtype == np.float32
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert out.words.shape == (41, MAX_WORDS) and out.words.dtype == np.int64
    assert out.labels.shape == (41, 2) and out.labels.dtype == np.int64
    assert out.positions.shape == (41, 2, 2) and out.positions.dtype == np.int64
    one = out.labels[:, 1] < 0
    assert one.tolist() == [i % 2 == 0 for i in range(41)]  # alternately one and two digits
    assert (out.positions[one, 1] == -1).all() and (out.positions[~one] >= 0).all()
    assert set(_texts(out.words)) <= set(training_captions())


def test_canvases_are_determined_by_the_seed(mnist):
    x, y = mnist["test_x"], mnist["test_y"]
    a, b, c = (mnist_captions(x, y, n=20, seed=s, captions=held_out_captions()) for s in (3, 3, 4))
    for field in a._fields:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.images, c.images) and not np.array_equal(a.words, c.words)


def test_digits_are_where_and_what_their_captions_say(mnist):
    out = mnist_captions(mnist["train_x"], mnist["train_y"], n=400, seed=1, captions=all_captions())
    assert len(set(_texts(out.words))) > 150  # many captions drawn
    for image, text, labels, positions in zip(out.images[:, 0], _texts(out.words), out.labels, out.positions):
        layout = parse_caption(text)
        k = len(layout.digits)
        assert labels[:k].tolist() == list(layout.digits) and (labels[k:] == -1).all()
        for (r, c), rows, cols in zip(positions, layout.rows, layout.cols):
            assert rows[0] <= r <= rows[1] and cols[0] <= c <= cols[1]
        inked = np.zeros((60, 60), bool)
        for r, c in positions[:k]:
            inked[r : r + 28, c : c + 28] = True
        assert image[~inked].max() == 0 and image[inked].sum() > 20  # the ink lies in the digits' windows
    # The bands are covered end to end.
    one = out.labels[:, 1] < 0
    assert set(out.positions[one, 0].ravel()) == set(range(0, 5)) | set(range(14, 19)) | set(range(28, 33))


def test_each_digit_is_an_image_of_its_label_drawn_uniformly():
    """With one image per label the canvases are determined by their labels and positions; with three per
    label, which one was pasted shows in its grey level."""
    x, y = np.random.default_rng(0).uniform(0.05, 1, (10, 784)).astype(np.float32), np.arange(10)
    out = mnist_captions(x, y, n=60, seed=2, captions=all_captions())
    for image, labels, positions in zip(out.images[:, 0], out.labels, out.positions):
        k = (labels >= 0).sum()
        np.testing.assert_array_equal(image, _paste_reference(x[labels[:k]], positions[:k]))

    levels = np.arange(1, 31, dtype=np.float32) / 32
    x, y = np.repeat(levels[:, None], 784, axis=1), np.arange(30) % 10  # image i is flat at level i
    one_digit = [t for t in all_captions() if len(parse_caption(t).digits) == 1]
    out = mnist_captions(x, y, n=600, seed=3, captions=one_digit)
    assert (out.labels[:, 1] == -1).all()  # one kind of caption given: every canvas is of that kind
    picked = np.rint(out.images.max(axis=(1, 2, 3)) * 32).astype(int) - 1
    assert (y[picked] == out.labels[:, 0]).all()
    assert set(picked) == set(range(30))  # every image of a label gets drawn


def test_bad_generator_inputs_are_errors(mnist):
    x, y = mnist["train_x"][:100], mnist["train_y"][:100]
    with pytest.raises(DrawnetError, match="which x has no image of"):
        mnist_captions(x[y != 7], y[y != 7], n=10, seed=0, captions=["the digit 7 is at the top of the image"])
    with pytest.raises(DrawnetError, match="no captions"):
        mnist_captions(x, y, n=10, seed=0, captions=[])
    with pytest.raises(DrawnetError, match="not a caption"):
        mnist_captions(x, y, n=10, seed=0, captions=["the digit 7 is at the top of the digit 7"])


def test_the_arrays_are_cached_and_the_test_split_holds_the_held_out_captions(tmp_path, mnist, monkeypatch):
    small = {f"{s}_{p}": mnist[f"{s}_{p}"][:300] for s in ("train", "valid", "test") for p in ("x", "y")}
    np.savez(tmp_path / "mnist.npz", **small)
    arrays = captions.mnist_captions_arrays(tmp_path, seed=1, sizes=(30, 12, 10))
    cache = tmp_path / "mnist-captions-seed1-30-12-10.npz"
    assert cache.is_file() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    for split, n in zip(("train", "valid", "test"), (30, 12, 10)):
        assert arrays[f"{split}_x"].shape == (n, 1, 60, 60) and arrays[f"{split}_x"].dtype == np.float16
        assert arrays[f"{split}_y"].shape == (n, MAX_WORDS) and arrays[f"{split}_labels"].shape == (n, 2)
        assert arrays[f"{split}_positions"].shape == (n, 2, 2)
        texts = set(_texts(arrays[f"{split}_y"]))
        assert texts <= HELD_OUT if split == "test" else not texts & HELD_OUT
    fresh = mnist_captions(small["valid_x"], small["valid_y"], 12, seed=[1, 1], captions=training_captions())
    np.testing.assert_array_equal(arrays["valid_x"], fresh.images)  # float16 holds MNIST's sums exactly
    (tmp_path / "mnist.npz").unlink()  # the cache alone is enough now
    again = captions.mnist_captions_arrays(tmp_path, seed=1, sizes=(30, 12, 10))
    assert all(np.array_equal(again[k], arrays[k]) for k in arrays)

    # Through the data set registry (data.py's wrapper imports captions.mnist_captions_arrays when called).
    assert data.SHAPES["mnist-captions"] == (1, 60, 60)
    monkeypatch.setattr(captions, "mnist_captions_arrays",
                        partial(captions.mnist_captions_arrays, seed=1, sizes=(30, 12, 10)))
    splits = data.load_dataset("mnist-captions", tmp_path, shape=(1, 60, 60))
    assert [tuple(s.shape) for s in splits] == [(30, 1, 60, 60), (12, 1, 60, 60), (10, 1, 60, 60)]
    labels = data.load_labels("mnist-captions", tmp_path)
    assert torch.equal(labels.test, torch.from_numpy(arrays["test_y"]))


# --- checking images against captions ---

def test_the_digit_classifier_learns_mnist(classifier, mnist):
    assert captions.digit_accuracy(classifier, mnist["valid_x"], mnist["valid_y"]) > 0.95


def test_the_digit_classifier_is_cached_as_safetensors(tmp_path, monkeypatch, classifier):
    monkeypatch.setenv("DRAWNET_CACHE", str(tmp_path))
    monkeypatch.setattr(captions, "train_digit_classifier", lambda: classifier)
    assert captions.digit_classifier() is classifier  # trained, then saved
    path = tmp_path / "digit-classifier.safetensors"
    assert set(load_file(path)) == set(classifier.state_dict())
    monkeypatch.setattr(captions, "train_digit_classifier", lambda: pytest.fail("should load, not train"))
    loaded = captions.digit_classifier()
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(loaded(x), classifier(x))
    path.write_bytes(b"not safetensors")
    with pytest.raises(DrawnetError, match="digit-classifier.safetensors"):
        captions.digit_classifier()


def test_the_data_sets_own_canvases_agree_with_their_captions(classifier, mnist):
    out = mnist_captions(mnist["test_x"], mnist["test_y"], n=1000, seed=5, captions=all_captions())
    images, texts = torch.from_numpy(out.images), _texts(out.words)
    scores = caption_agreement(images, texts, classifier)
    assert scores["positions"] >= 0.99 and scores["digits"] >= 0.95 and scores["both"] >= 0.95, scores

    shuffled = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))]
    scores = caption_agreement(images, shuffled, classifier)
    assert scores["digits"] < 0.2 and scores["positions"] < 0.4 and scores["both"] < 0.1, scores

    blank = caption_agreement(torch.zeros_like(images), texts, classifier)
    assert blank["positions"] == 0 and blank["both"] == 0 and blank["digits"] < 0.2, blank


@pytest.mark.parametrize("drawn, claimed, wrong", [
    ("the digit 4 is at the top left of the image", "the digit 4 is at the bottom right of the image", "positions"),
    ("the digit 4 is at the top left of the image", "the digit 4 is at the top of the image", "positions"),
    ("the digit 4 is at the center of the image", "the digit 4 is at the right of the image", "positions"),
    # Swapped digits: there is a digit in each place (positions agree), but not the one the caption names.
    ("the digit 2 is at the top of the digit 8", "the digit 2 is at the bottom of the digit 8", "digits"),
    ("the digit 2 is on the left of the digit 8", "the digit 2 is on the right of the digit 8", "digits"),
])
def test_digits_in_the_wrong_place_or_order_disagree(classifier, mnist, drawn, claimed, wrong):
    images = torch.from_numpy(mnist_captions(mnist["test_x"], mnist["test_y"], n=40, seed=6, captions=[drawn]).images)
    assert caption_agreement(images, [drawn] * 40, classifier)["both"] >= 0.9
    scores = caption_agreement(images, [claimed] * 40, classifier)
    assert scores[wrong] <= 0.05 and scores["both"] <= 0.05, scores


def test_caption_agreement_checks_its_inputs(classifier):
    with pytest.raises(DrawnetError, match=r"images \[n, 1, 60, 60\] and n captions"):
        caption_agreement(torch.zeros(2, 1, 28, 28), ["the digit 1 is at the top of the image"] * 2, classifier)
    with pytest.raises(DrawnetError, match="2 captions"):
        caption_agreement(torch.zeros(3, 1, 60, 60), ["the digit 1 is at the top of the image"] * 2, classifier)
    with pytest.raises(DrawnetError, match="not a caption"):
        caption_agreement(torch.zeros(1, 1, 60, 60), ["the digit 1 is at the top of the digit 1"], classifier)
