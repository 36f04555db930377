"""TRL's DPOTrainer as the outside oracle: on the same model (ours converted to HF), reference,
pairs and batch, our sigmoid DPO loss, its gradients and reward metrics equal TRL's."""
import datasets
import pytest
import torch
import transformers
import trl
from tokenizers import Tokenizer, models

from kr_mini_llm import Transformer
from kr_mini_llm.dpo.data import Pair, collate_pairs
from kr_mini_llm.dpo.loss import dpo_loss, sequence_logps

from .conftest import tiny_config

PAIRS = [([1, 40, 41, 42, 43], [50, 51, 5], [60, 5]),
         ([1, 44, 45], [52, 5], [61, 62, 63, 64, 5]),
         ([1, 46, 47, 48, 49, 30, 31], [53, 54, 55, 5], [65, 66, 5])]


def hf_tokenizer():
    """TRL needs a tokenizer object for its pad and eos tokens; the batch below is already token ids."""
    vocab = models.WordLevel({"<pad>": 0, "</s>": 2}, unk_token="<pad>")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(vocab), pad_token="<pad>", eos_token="</s>")


@pytest.mark.parametrize("precomputed", [False, True], ids=["reference-model", "precomputed-reference"])
def test_dpo_loss_gradients_and_rewards_equal_trl(tmp_path, precomputed):
    beta = 0.3
    torch.manual_seed(0)
    reference = Transformer(tiny_config(tie_word_embeddings=False)).eval()
    policy = Transformer(tiny_config(tie_word_embeddings=False))
    policy.load_state_dict(reference.state_dict())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # the policy has moved away from the reference
    reference.save_hf(tmp_path / "ref")
    policy.save_hf(tmp_path / "policy")
    load = lambda d: transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)  # noqa: E731
    hf_policy, hf_ref = load(tmp_path / "policy"), load(tmp_path / "ref")

    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type=["sigmoid"], report_to=[],
                         use_cpu=True, bf16=False)
    dummy = datasets.Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    theirs = trl.DPOTrainer(model=hf_policy, ref_model=hf_ref, args=args, processing_class=hf_tokenizer(),
                            train_dataset=dummy)
    collator = trl.trainer.dpo_trainer.DataCollatorForPreference(pad_token_id=0)
    trl_batch = collator([{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in PAIRS])
    theirs.model.train()
    their_loss = theirs.compute_loss(theirs.model, trl_batch)
    their_loss.backward()

    batch, _ = collate_pairs([Pair(p, c, r) for p, c, r in PAIRS])
    with torch.no_grad():
        ref_logps = sequence_logps(reference, batch.x, batch.y)
    if precomputed:  # as the trainer does: once, in float64, then read back per pair
        pairs = [Pair(p, c, r, (float(ref_logps[i]), float(ref_logps[i + len(PAIRS)])))
                 for i, (p, c, r) in enumerate(PAIRS)]
        batch, _ = collate_pairs(pairs)
        ref_logps = batch.ref_logps
    policy.train()
    loss, stats = dpo_loss(sequence_logps(policy, batch.x, batch.y), ref_logps, beta)
    loss.backward()

    assert abs(their_loss.item() - torch.log(torch.tensor(2.0)).item()) > 1e-3  # a loss that measures something
    torch.testing.assert_close(loss, their_loss, rtol=1e-5, atol=1e-6)
    their_grads = {n.removeprefix("model."): p.grad for n, p in theirs.model.named_parameters()}
    ours = dict(policy.named_parameters())
    assert set(ours) == set(their_grads)
    for name, p in ours.items():
        torch.testing.assert_close(p.grad, their_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    logged = {k: v[-1] for k, v in theirs._metrics["train"].items()}
    for ours_key, trl_key in (("reward_chosen", "rewards/chosen"), ("reward_rejected", "rewards/rejected"),
                              ("reward_margin", "rewards/margins"), ("reward_accuracy", "rewards/accuracies")):
        assert float(stats[ours_key].mean()) == pytest.approx(logged[trl_key], rel=1e-4, abs=1e-6), ours_key
