import math
from types import SimpleNamespace

import pytest
import torch

import train
from optim import Optimizers, make_optimizer

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--device=cpu", "--dtype=float32"]


def newton_schulz(g, steps=5):
    """Jordan et al.'s quintic iteration in float64, written out from the Muon post: the reference."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double() / g.double().norm()
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    cfg = train.configure(train.DEFAULTS, TINY + ["--optimizer=muon", "--learning_rate=2e-3", "--muon_lr=0.05"], verbose=False)
    model = train.new_model(cfg, 70)
    opt = make_optimizer(cfg, model, "cpu")
    adamw, muon = opt.optimizers
    assert isinstance(opt, Optimizers) and isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    assert len(in_muon) == 2 * 4  # per block: attention's qkv and output, the MLP's two matrices
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_adamw == set(names.values()) - in_muon and "transformer.wte.weight" in in_adamw  # (the head is tied to it)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]  # embeddings decayed, norms and biases not
    for group in opt.param_groups:  # what the loop does at every step: Muon keeps muon_lr / learning_rate of the schedule
        group["lr"] = train.get_lr(100, cfg) * group.get("lr_scale", 1.0)
    assert muon.param_groups[0]["lr"] == pytest.approx(adamw.param_groups[0]["lr"] * 25)


def test_muon_step_is_orthogonalised_nesterov_momentum():
    """Two steps on one tall matrix, checked against the update written out by hand: momentum buffer
    B = mu B + (1 - mu) g, Nesterov look-ahead (1 - mu) g + mu B, Newton-Schulz, lr * sqrt(rows/cols),
    decoupled weight decay. torch.optim.Muon iterates in bfloat16, hence the tolerance."""
    torch.manual_seed(0)
    w0 = torch.randn(48, 16)
    w = torch.nn.Parameter(w0.clone())  # tall, so that the shape adjustment shows
    muon = torch.optim.Muon([w], lr=0.05, weight_decay=0.1, momentum=0.9, nesterov=True)
    expected, buf = w0.double(), torch.zeros(48, 16, dtype=torch.float64)
    for _ in range(2):
        g = torch.randn(48, 16)
        w.grad = g.clone()
        muon.step()
        buf = 0.9 * buf + 0.1 * g.double()
        update = newton_schulz(0.1 * g.double() + 0.9 * buf)
        expected = expected * (1 - 0.05 * 0.1) - 0.05 * math.sqrt(48 / 16) * update
    step = (w.detach().double() - w0.double())
    assert (w.detach().double() - expected).norm() < 0.02 * step.norm()
    # the update is nearly semi-orthogonal: its singular values are about 1 (Jordan et al.: within ~[0.7, 1.2])
    s = torch.linalg.svdvals(newton_schulz(torch.randn(48, 16) @ torch.diag(torch.logspace(-2, 0, 16))))
    assert 0.5 < s.min() and s.max() < 1.3


def test_muon_lowers_the_loss_of_a_tiny_model():
    """Muon on the blocks and AdamW on the rest train the model together: 30 steps on one fixed batch."""
    cfg = train.configure(train.DEFAULTS, TINY + ["--optimizer=muon", "--learning_rate=3e-3"], verbose=False)
    torch.manual_seed(0)
    model = train.new_model(cfg, 70)
    opt = make_optimizer(cfg, model, "cpu")
    x = torch.randint(0, 65, (8, 32))
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(30):
        _, loss = model(x, x.roll(-1, dims=1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]  # 4.24 -> 2.20: it memorises the batch
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every parameter was stepped


def test_unknown_optimizer_is_a_config_error():
    cfg = train.configure(train.DEFAULTS, TINY + ["--optimizer=sgd"], verbose=False)
    with pytest.raises(train.ConfigError, match="optimizer='sgd' is not adamw or muon"):
        make_optimizer(cfg, train.new_model(cfg, 70), "cpu")


def test_muon_with_fsdp_is_refused():
    cfg = train.configure(train.DEFAULTS, TINY + ["--optimizer=muon", "--fsdp=True"], verbose=False)
    with pytest.raises(train.ConfigError, match="optimizer=muon does not work with fsdp=True"):
        train.check_config(cfg, SimpleNamespace(world_size=2))


def test_resume_with_another_optimizer_says_which_to_use(tmp_path, shakespeare_char):
    args = TINY + [f"--dataset={shakespeare_char}", f"--out_dir={tmp_path}", "--max_iters=2", "--eval_interval=2",
                   "--eval_iters=1", "--batch_size=2", "--max_time=0", "--sample_tokens=0", "--threads=1"]
    train.main(args + ["--optimizer=adamw"])
    with pytest.raises(SystemExit, match="was trained with optimizer=adamw, this run asks for muon: resume with --optimizer=adamw"):
        train.main(args + ["--optimizer=muon", "--init_from=resume", "--max_iters=4"])


def test_muon_also_takes_an_encoder_decoders_decoder_blocks():
    cfg = train.configure(train.DEFAULTS, TINY + ["--optimizer=muon", "--n_decoder_layer=1"], verbose=False)
    model = train.new_model(cfg, 70, seq2seq=True)
    _, muon = make_optimizer(cfg, model, "cpu").optimizers
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in model.named_parameters() if n.startswith(("transformer.h.", "decoder.h.")) and p.dim() == 2}
    assert any(n.startswith("decoder.h.") for n in in_muon)  # cross-attention's c_kv included
