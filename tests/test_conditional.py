"""Conditional DRAW: a class label or a caption fed to the decoder at every step (model.py, CaptionReader)."""
import pytest
import torch

from drawnet import DRAW, DrawConfig
from drawnet.captions import MAX_WORDS, VOCAB, encode_captions
from drawnet.errors import DrawnetError

SMALL = dict(T=3, enc_size=12, dec_size=10, z_size=4)
LABEL = DrawConfig.preset("mnist-label", **SMALL)
CAPTION = DrawConfig.preset("mnist-captions", caption_size=6, align_size=5, **SMALL)
CAPTIONS = ["the digit 7 is at the top of the digit 5", "the digit 3 is at the bottom left of the image",
            "the digit 0 is on the right of the digit 9"]


def lively(model):
    """Larger random weights than the initialisation, so every term of the recurrence matters."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return model.double()


def images(cfg, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, 1, cfg.height, cfg.width, generator=gen), generator=gen).double()


def conditions(cfg):
    if cfg.num_classes:
        return torch.tensor([7, 0, 3])
    return encode_captions(CAPTIONS)


@pytest.mark.parametrize("cfg", [LABEL, CAPTION], ids=["label", "caption"])
def test_fused_path_matches_the_layer_by_layer_recurrence(cfg):
    model = lively(DRAW(cfg))
    x, y = images(cfg, 3), conditions(cfg)
    torch.manual_seed(5)
    fast = model(x, y=y)
    fast_grads = torch.autograd.grad(fast.loss, list(model.parameters()))
    torch.manual_seed(5)
    plain = model._forward_by_layer(x, False, None, y)
    plain_grads = torch.autograd.grad(plain.loss, list(model.parameters()))
    assert torch.allclose(fast.loss, plain.loss, rtol=1e-10)
    assert torch.allclose(fast.log_w, plain.log_w, rtol=1e-10)
    for (name, _), a, b in zip(model.named_parameters(), fast_grads, plain_grads):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10), name

    gen_fast = model.generate(3, generator=torch.Generator().manual_seed(2), y=y)
    gen_plain = model._generate_by_layer(3, torch.Generator().manual_seed(2), y)
    assert torch.allclose(gen_fast.images, gen_plain.images, rtol=1e-10)
    if cfg.vocab_size:
        assert torch.allclose(gen_fast.alignments, gen_plain.alignments, rtol=1e-10)
    else:
        assert gen_fast.alignments is None


@pytest.mark.parametrize("cfg", [LABEL, CAPTION], ids=["label", "caption"])
def test_the_condition_reaches_the_decoder_and_its_weights_learn(cfg):
    model = lively(DRAW(cfg))
    y = conditions(cfg)
    a = model.generate(3, generator=torch.Generator().manual_seed(0), y=y).images
    b = model.generate(3, generator=torch.Generator().manual_seed(0), y=y.roll(1, 0)).images
    assert not torch.allclose(a, b)  # the same noise, other labels or captions: other images
    loss = model(images(cfg, 3), y=y).loss
    loss.backward()
    Z = cfg.z_size
    assert model.decoder.weight.grad[:, Z : Z + model.y_size].abs().sum() > 0
    if cfg.vocab_size:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.captions.parameters())


def test_label_model_weights_one_column_block_per_class():
    """onehot(y) enters like any decoder input: y = k adds column k of the label block to the gates."""
    model = lively(DRAW(LABEL))
    y = torch.tensor([4])
    dec_const = model._decoder_constant(y)
    Z = LABEL.z_size
    assert torch.allclose(dec_const[0], model.decoder.bias + model.decoder.weight[:, Z + 4])


def test_caption_attention_is_a_distribution_over_the_real_words():
    model = lively(DRAW(CAPTION))
    y = encode_captions(CAPTIONS)
    alpha = model.generate(3, generator=torch.Generator().manual_seed(0), y=y).alignments
    assert alpha.shape == (CAPTION.T, 3, MAX_WORDS)
    assert torch.allclose(alpha.sum(2), torch.ones(CAPTION.T, 3, dtype=alpha.dtype))
    assert (alpha[y.expand(CAPTION.T, -1, -1) == 0] == 0).all()  # padding gets no attention


def test_padding_a_caption_further_changes_nothing():
    """Packed sequences: the backward LSTM starts at the last word, however much padding follows."""
    model = lively(DRAW(CAPTION))
    y = encode_captions(CAPTIONS)
    longer = torch.cat([y, torch.zeros(3, 4, dtype=torch.long)], 1)
    a = model.generate(3, generator=torch.Generator().manual_seed(0), y=y)
    b = model.generate(3, generator=torch.Generator().manual_seed(0), y=longer)
    assert torch.allclose(a.images, b.images, rtol=1e-10)
    assert torch.allclose(b.alignments[..., : y.shape[1]], a.alignments, rtol=1e-10)


def test_conditional_models_save_and_load(tmp_path):
    for cfg in (LABEL, CAPTION):
        model = DRAW(cfg)
        model.save_pretrained(tmp_path / f"m{cfg.num_classes}")
        loaded = DRAW.from_pretrained(tmp_path / f"m{cfg.num_classes}")
        assert loaded.config == cfg
        y = conditions(cfg)
        a = model.generate(3, generator=torch.Generator().manual_seed(3), y=y).images
        assert torch.equal(a, loaded.generate(3, generator=torch.Generator().manual_seed(3), y=y).images)


@pytest.mark.parametrize("cfg, y, message", [
    (LABEL, None, "draws from a label"),
    (LABEL, torch.tensor([1, 2]), "shape [3]"),
    (LABEL, torch.tensor([1.0, 2.0, 3.0]), "int64"),
    (LABEL, torch.tensor([1, 2, 10]), "0..9"),
    (CAPTION, None, "draws from a caption"),
    (CAPTION, torch.ones(3, dtype=torch.long), "word ids of shape"),
    (CAPTION, torch.full((3, 4), len(VOCAB)), "word ids must lie"),
    (CAPTION, torch.zeros(3, 4, dtype=torch.long), "at least one word"),
    (DrawConfig.preset("mnist", **SMALL), torch.tensor([1, 2, 3]), "unconditional"),
])
def test_bad_conditions_are_clear_errors(cfg, y, message):
    model = DRAW(cfg)
    with pytest.raises(DrawnetError, match=message.replace("[", r"\[").replace(".", r"\.")):
        model.generate(3, y=y)
    with pytest.raises(DrawnetError, match=message.replace("[", r"\[").replace(".", r"\.")):
        model(torch.zeros(3, 1, cfg.height, cfg.width), y=y)


@pytest.mark.parametrize("fields, message", [
    (dict(num_classes=-1), "num_classes"),
    (dict(num_classes=10, vocab_size=30), "not both"),
    (dict(vocab_size=1), "padding"),
    (dict(caption_size=0), "caption_size"),
])
def test_bad_conditional_configs_are_clear_errors(fields, message):
    with pytest.raises(DrawnetError, match=message):
        DrawConfig(**fields)
