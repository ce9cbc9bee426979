"""``laion-audit erase`` (ESD) on the shipped tiny-sd: a loadable pipeline and card, only the
intended parameters change, the same seed gives the same weights, clear errors on bad input.
Tiny budgets (a few steps on a short DDIM schedule): seconds, not minutes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from audit.cli import main
from audit.mitigations.esd import ESDSettings, erase_concept, is_trained
from audit.models import TINY_SD_DIR, load_generator

CONCEPT = "sunflowers by van gogh"
FAST = dict(steps=3, lr=1e-3, eta=1.0, ddim_steps=3)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """One torch thread: the tiny UNet gains nothing from more, and on a shared 2-core machine
    two threads spin against other processes (the same steps run several times slower)."""
    torch.set_num_threads(1)


def _unet_state(pipe) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}


@pytest.fixture(scope="module")
def base():
    """One fp32 tiny-sd for the module; each erase starts from its original UNet weights."""
    return load_generator("tiny-sd", dtype=torch.float32)


@pytest.fixture(scope="module")
def original_unet(base) -> dict[str, torch.Tensor]:
    return _unet_state(base)


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def _erase(pipe, original: dict, method: str, seed: int = 0) -> dict[str, torch.Tensor]:
    pipe.unet.load_state_dict(original)
    res = erase_concept(pipe, CONCEPT, ESDSettings(method=method, seed=seed, **FAST))
    assert len(res.losses) == FAST["steps"] and all(v == v for v in res.losses)
    return _unet_state(pipe)


def test_cli_erase_writes_loadable_pipeline_and_card(tmp_path: Path, base, original_unet) -> None:
    out = tmp_path / "erased"
    code = main(
        ["erase", "--concept", CONCEPT, "--method", "esd-x", "--steps", "3", "--lr", "1e-3",
         "--eta", "1", "--ddim-steps", "3", "--device", "cpu", "--out", str(out), "-q"]
    )  # fmt: skip
    assert code == 0
    card = json.loads((out / "erase.json").read_text())
    assert card["method"] == "esd-x" and card["concept"] == CONCEPT
    assert card["settings"]["steps"] == 3 and len(card["loss_curve"]) == 3
    assert card["n_trained_parameters"] == len(card["trained_parameters"]) > 0
    assert all(".attn2." in n for n in card["trained_parameters"])
    assert card["seconds"] >= 0 and card["cpu_seconds"] >= 0
    assert list(out.rglob("*.safetensors")) and not list(out.rglob("*.bin"))
    pipe = load_generator(str(out))  # safetensors-only local load, as reproduce does
    changed = _changed(original_unet, _unet_state(pipe))
    assert changed and all(".attn2." in k for k in changed)
    for a, b in zip(pipe.text_encoder.state_dict().values(), base.text_encoder.state_dict().values()):  # fmt: skip
        assert torch.equal(a, b)
    from pipelines.reproduce import GenerationSettings, SeededGenerator

    imgs = SeededGenerator(pipe).generate(
        CONCEPT, [0], GenerationSettings(str(out), steps=2, height=64, width=64)
    )
    assert imgs[0].size == (64, 64)


@pytest.mark.parametrize(
    "method, allowed",
    [
        ("esd-x-strict", lambda k: ".attn2.to_k." in k or ".attn2.to_v." in k),
        (
            "esd-u",
            lambda k: (
                ".attn2." not in k
                and not k.startswith(("time_embedding", "conv_out", "conv_norm_out"))
            ),
        ),  # fmt: skip
    ],
)
def test_only_intended_parameters_change(method: str, allowed, base, original_unet) -> None:
    changed = _changed(original_unet, _erase(base, original_unet, method))
    assert changed, f"{method} changed nothing"
    assert all(allowed(k) for k in changed), sorted(k for k in changed if not allowed(k))
    assert all(is_trained(k, method) for k in changed)


def test_same_seed_same_weights_other_seed_differs(base, original_unet) -> None:
    a, b, c = (_erase(base, original_unet, "esd-x", seed=s) for s in (3, 3, 4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_parameter_selection_matches_the_paper() -> None:
    assert is_trained("mid_block.attentions.0.transformer_blocks.0.attn2.to_q.weight", "esd-x")
    assert not is_trained("mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight", "esd-x")
    assert not is_trained("up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight", "esd-x-strict")  # fmt: skip
    assert is_trained("up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight", "esd-x-strict")  # fmt: skip
    assert is_trained("down_blocks.0.resnets.0.conv1.weight", "esd-u")
    assert not is_trained("time_embedding.linear_1.weight", "esd-u")
    assert not is_trained("conv_out.weight", "esd-u")
    with pytest.raises(ValueError):
        ESDSettings(method="esd-everything")


def test_bad_inputs_give_one_clear_error(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "o")
    assert main(["erase", "--concept", "  ", "--out", out]) == 2
    assert "erase.concept" in capsys.readouterr().err
    not_a_pipeline = tmp_path / "folder"
    not_a_pipeline.mkdir()
    (not_a_pipeline / "weights.txt").write_text("x")
    assert main(["erase", "--concept", "x", "--generator", str(not_a_pipeline), "--out", out]) == 3
    err = capsys.readouterr().err
    assert "not a diffusers pipeline" in err and err.count("\n") == 1
    assert main(["erase", "--concept", "x", "--generator", str(not_a_pipeline / "weights.txt"),
                 "--out", out]) == 3  # fmt: skip
    assert "not a diffusers pipeline" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert main(["erase", "--concept", "x", "--out", str(busy)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse choices: usage error
        main(["erase", "--concept", "x", "--method", "esd-y", "--out", out])
    assert exc.value.code == 2
    assert main(["erase", "--concept", "x", "--steps", "0", "--out", out]) == 2
    assert "erase.steps" in capsys.readouterr().err
    assert TINY_SD_DIR.is_dir()  # nothing above touched the shipped model


def test_an_interrupted_erase_resumes_to_the_same_weights(tmp_path: Path, base, original_unet) -> None:  # fmt: skip
    """A checkpoint every 2 steps; a run stopped after 3 of 5 steps resumes at step 2 and ends
    with the weights (and loss curve) of a run that was never interrupted."""
    from audit.mitigations.esd import Checkpoint

    settings = ESDSettings(method="esd-x", seed=1, steps=5, lr=1e-3, eta=1.0, ddim_steps=3)
    base.unet.load_state_dict(original_unet)
    whole = erase_concept(base, CONCEPT, settings)
    expected = _unet_state(base)

    def stop_after(k: int):
        def wrap(steps):
            for i, s in enumerate(steps):
                if i == k:
                    raise KeyboardInterrupt
                yield s

        return wrap

    ckpt = Checkpoint(tmp_path / "state.pt", every=2, generator="tiny-sd")
    base.unet.load_state_dict(original_unet)
    with pytest.raises(KeyboardInterrupt):
        erase_concept(base, CONCEPT, settings, progress=stop_after(3), checkpoint=ckpt)
    assert ckpt.load(CONCEPT, settings)["step"] == 2
    base.unet.load_state_dict(original_unet)  # a new process loads the original again
    resumed = erase_concept(base, CONCEPT, settings, checkpoint=ckpt)
    assert resumed.resumed_from == 2 and resumed.losses == whole.losses
    got = _unet_state(base)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # another concept or setting never resumes from it
    assert ckpt.load("another concept", settings) is None
    assert ckpt.load(CONCEPT, ESDSettings(method="esd-x", seed=2, steps=5, lr=1e-3, eta=1.0,
                                          ddim_steps=3)) is None  # fmt: skip


def test_erase_options_come_from_audit_toml(tmp_path: Path, capsys) -> None:
    """The [erase] section of audit.toml (``-c``) sets any option; the command line wins;
    unknown keys and bad values name the section and field."""
    out = tmp_path / "erased"
    toml = tmp_path / "audit.toml"
    toml.write_text(
        f'[erase]\nconcept = "{CONCEPT}"\nmethod = "esd-x-strict"\nsteps = 9\nlr = 1e-3\n'
        f'eta = 1.0\nddim_steps = 3\ndevice = "cpu"\ncheckpoint_every = 1\nout = "{out}"\n'
    )
    assert main(["erase", "-c", str(toml), "--steps", "2", "-q"]) == 0
    card = json.loads((out / "erase.json").read_text())
    assert card["method"] == "esd-x-strict" and card["settings"]["steps"] == 2
    assert card["concept"] == CONCEPT and card["settings"]["ddim_steps"] == 3
    assert not list(tmp_path.glob(".*checkpoint*"))  # the checkpoint goes once the run is saved
    toml.write_text('[erase]\nconcept = "x"\nstepz = 3\n')
    assert main(["erase", "-c", str(toml), "--out", str(tmp_path / "o2"), "-q"]) == 2
    assert "erase.stepz: unknown option" in capsys.readouterr().err
    toml.write_text('[erase]\nconcept = "x"\nlr = -1\n')
    assert main(["erase", "-c", str(toml), "--out", str(tmp_path / "o2"), "-q"]) == 2
    assert "erase.lr" in capsys.readouterr().err
