"""Layer pruning (training/prune.py): a smaller student keeps K evenly spaced layers of its base model.

Every pruned model is checked against a reference built by transformers with K layers from the start and the
kept layers' weights copied in: same logits, same greedy generation (with the KV cache). Tiny random models
built here; nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from schemas.errors import RecipeError
from schemas.student import STUDENT_FILE, StudentFormat
from training.prune import apply_pruning, kept_layers, prune_layers, prune_student

VOCAB = 48
IDS = torch.tensor([[5, 9, 17, 3, 22, 40, 11], [7, 7, 30, 2, 19, 8, 44]])


def _tiny_llama(layers: int = 6, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
    return LlamaForCausalLM(config).eval()


def _tiny_bart(enc: int = 4, dec: int = 4, seed: int = 0):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    config = BartConfig(vocab_size=VOCAB, d_model=16, encoder_layers=enc, decoder_layers=dec,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                        decoder_start_token_id=2, forced_eos_token_id=None)
    return BartForConditionalGeneration(config).eval()


def _tiny_t5(enc: int = 4, dec: int = 4, seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=enc, num_decoder_layers=dec,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config).eval()


def _copied(build, source_state: dict, stacks: dict[str, list[int]], **sizes):
    """A model built with the smaller sizes from the start, holding the kept layers' weights of `source_state`
    (`stacks`: weight-name prefix of a layer stack -> kept indices). Strict loading: every weight is placed."""
    ref = build(**sizes)
    state = {}
    for key, value in source_state.items():
        prefix = next((p for p in stacks if key.startswith(p)), None)
        if prefix is None:
            state[key] = value
            continue
        index, rest = key[len(prefix):].split(".", 1)
        if int(index) in stacks[prefix]:
            state[f"{prefix}{stacks[prefix].index(int(index))}.{rest}"] = value
    ref.load_state_dict(state, strict=True)
    return ref.eval()


def _layer_indices(stack) -> list[int]:
    return sorted({m.layer_idx for layer in stack for m in layer.modules() if getattr(m, "layer_idx", None)
                   is not None})


def _greedy(model, **inputs) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=1,
                              pad_token_id=0)


def _logits(model, **inputs) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits


# -- which layers ---------------------------------------------------------------------------------------------


def test_kept_layers_evenly_spaced_first_and_last():
    assert kept_layers(30, 15) == [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29]  # SmolLM2-135M -> half
    assert kept_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBART 12-6's decoder layers
    assert kept_layers(12, 3) == [0, 6, 11]
    assert kept_layers(6, 2) == [0, 5]
    assert kept_layers(6, 1) == [0]
    assert kept_layers(6, 6) == kept_layers(6, 9) == [0, 1, 2, 3, 4, 5]
    for n in range(1, 41):
        for k in range(1, n + 1):
            got = kept_layers(n, k)
            assert len(got) == k and got == sorted(set(got)) and got[0] == 0 and (k == 1 or got[-1] == n - 1)
    for n, k in ((6, 0), (6, -2), (0, 1)):
        with pytest.raises(ValueError):
            kept_layers(n, k)


# -- each architecture ------------------------------------------------------------------------------------------


def test_llama_pruned_equals_a_model_built_with_k_layers():
    model = _tiny_llama()
    state = copy.deepcopy(model.state_dict())
    kept = kept_layers(6, 3)
    prov = prune_layers(model, kept)
    ref = _copied(_tiny_llama, state, {"model.layers.": kept}, layers=3)
    assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
    assert _layer_indices(model.model.layers) == [0, 1, 2]
    n_ref = sum(p.numel() for p in ref.parameters())
    assert prov == {"model_class": "LlamaForCausalLM", "stacks": {"decoder": {"from": 6, "kept": [0, 3, 5]}},
                    "params_before": sum(p.numel() for p in _tiny_llama().parameters()), "params_after": n_ref}
    assert json.loads(json.dumps(prov)) == prov  # it goes into student.json as is
    mask = torch.ones_like(IDS)
    assert torch.equal(_logits(model, input_ids=IDS), _logits(ref, input_ids=IDS))
    out = _greedy(model, input_ids=IDS, attention_mask=mask)  # the KV cache is indexed by the renumbered layers
    assert out.shape[1] == IDS.shape[1] + 6
    assert torch.equal(out, _greedy(ref, input_ids=IDS, attention_mask=mask))
    assert torch.equal(out, _greedy(model, input_ids=IDS, attention_mask=mask, use_cache=False))


def test_qwen2_layer_types_follow_the_kept_layers():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def build(layers=6, types=None):
        torch.manual_seed(0)
        config = Qwen2Config(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=32, max_position_embeddings=64,
                             use_sliding_window=True, sliding_window=3, max_window_layers=2, layer_types=types)
        return Qwen2ForCausalLM(config).eval()

    model = build()
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 4
    state = copy.deepcopy(model.state_dict())
    prune_layers(model, [0, 1, 5])
    assert model.config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    ref = _copied(build, state, {"model.layers.": [0, 1, 5]}, layers=3, types=model.config.layer_types)
    assert torch.equal(_logits(model, input_ids=IDS), _logits(ref, input_ids=IDS))
    assert torch.equal(_greedy(model, input_ids=IDS), _greedy(ref, input_ids=IDS))


def _assert_seq2seq_equal(model, ref, dec) -> None:
    """The pruned seq2seq model gives the reference's logits and greedy output, with and without the KV cache."""
    assert torch.equal(_logits(model, input_ids=IDS, decoder_input_ids=dec),
                       _logits(ref, input_ids=IDS, decoder_input_ids=dec))
    out = _greedy(model, input_ids=IDS)
    assert torch.equal(out, _greedy(ref, input_ids=IDS))
    assert torch.equal(out, _greedy(model, input_ids=IDS, use_cache=False))


def test_bart_decoder_and_encoder_pruned():
    model = _tiny_bart()
    state = copy.deepcopy(model.state_dict())
    prov = prune_layers(model, [0, 3], encoder_kept=[0, 1, 3])
    assert prov["stacks"] == {"encoder": {"from": 4, "kept": [0, 1, 3]}, "decoder": {"from": 4, "kept": [0, 3]}}
    assert (len(model.model.encoder.layers), len(model.model.decoder.layers)) == (3, 2)
    assert (model.config.encoder_layers, model.config.decoder_layers) == (3, 2)
    assert _layer_indices(model.model.decoder.layers) == [0, 1]
    ref = _copied(_tiny_bart, state, {"model.encoder.layers.": [0, 1, 3], "model.decoder.layers.": [0, 3]},
                  enc=3, dec=2)
    _assert_seq2seq_equal(model, ref, torch.tensor([[2, 5, 9], [2, 7, 7]]))


def test_seq2seq_prune_student_keeps_the_whole_encoder():
    model = _tiny_bart(enc=4, dec=6)
    prov = prune_student(model, 3)
    assert prov["stacks"] == {"decoder": {"from": 6, "kept": [0, 3, 5]}}
    assert (len(model.model.encoder.layers), len(model.model.decoder.layers)) == (4, 3)
    assert prov["params_after"] < prov["params_before"]


def test_t5_pruned_keeps_block_0():
    model = _tiny_t5()
    state = copy.deepcopy(model.state_dict())
    prune_layers(model, [0, 3], encoder_kept=[0, 2])
    assert (len(model.encoder.block), len(model.decoder.block)) == (2, 2)
    assert (model.config.num_layers, model.config.num_decoder_layers) == (2, 2)
    assert (model.encoder.config.num_layers, model.decoder.config.num_layers) == (2, 2)
    assert _layer_indices(model.decoder.block) == [0, 1]
    ref = _copied(_tiny_t5, state, {"encoder.block.": [0, 2], "decoder.block.": [0, 3]}, enc=2, dec=2)
    _assert_seq2seq_equal(model, ref, torch.tensor([[0, 5, 9], [0, 7, 7]]))
    with pytest.raises(ValueError, match="layer 0 must be kept"):
        prune_layers(_tiny_t5(), [1, 3])


# -- replay, peft, refusals -------------------------------------------------------------------------------------


def test_apply_pruning_replays_it_on_a_fresh_model():
    for build, kept, enc in ((_tiny_llama, [0, 3, 5], None), (_tiny_bart, [1, 2], [0, 3]), (_tiny_t5, [0, 2], None)):
        pruned = build()
        prov = prune_layers(pruned, kept, enc) if enc else prune_layers(pruned, kept)
        fresh = apply_pruning(build(), json.loads(json.dumps(prov)))
        a, b = pruned.state_dict(), fresh.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert fresh.config.to_dict() == pruned.config.to_dict()
    with pytest.raises(ValueError, match="pruned from a base with 6 decoder layers; this LlamaForCausalLM has 4"):
        apply_pruning(_tiny_llama(layers=4), prov_llama := prune_layers(_tiny_llama(), [0, 5]))
    assert prov_llama["stacks"]["decoder"]["kept"] == [0, 5]


def test_prune_student_k_of_n():
    model = _tiny_llama()
    assert prune_student(model, 3)["stacks"] == {"decoder": {"from": 6, "kept": [0, 3, 5]}}
    assert prune_student(_tiny_llama(), 6) is None and prune_student(_tiny_llama(), 7) is None


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"w{i}": i for i in range(4, VOCAB)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def test_pruned_lora_student_reloads_as_base_prune_adapter(tmp_path: Path):
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    from curation.teachers.local import LocalTeacher
    from pipelines.steps.generate import _actor_teacher
    from training.evaluate import load_student

    base_dir, adapter = tmp_path / "base", tmp_path / "student"
    _tiny_llama().save_pretrained(base_dir)
    model = _tiny_llama()
    prov = prune_layers(model, kept_layers(6, 3))
    torch.manual_seed(1)
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)  # random B too: the adapter changes the logits
    student = get_peft_model(model, lora).eval()
    want = _logits(student, input_ids=IDS)
    student.save_pretrained(adapter)
    _word_tokenizer().save_pretrained(adapter)
    fmt = StudentFormat(arch="causal", base_model=str(base_dir), base_model_ref=str(base_dir), template="{text}",
                        max_length=32, dataset="tiny", options={"pruned": prov})
    (adapter / STUDENT_FILE).write_text(fmt.model_dump_json(indent=1), encoding="utf-8")
    from transformers import AutoModelForCausalLM

    again = PeftModel.from_pretrained(apply_pruning(AutoModelForCausalLM.from_pretrained(base_dir), prov),
                                      adapter).eval()
    assert len(again.base_model.model.model.layers) == 3
    assert torch.equal(_logits(again, input_ids=IDS), want)
    unpruned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter).eval()
    assert not torch.allclose(_logits(unpruned, input_ids=IDS), want, atol=1e-3)  # the check can fail

    merged, _ = load_student(str(base_dir), str(adapter), fmt)  # `paradistill evaluate`
    assert len(merged.model.layers) == 3
    torch.testing.assert_close(_logits(merged, input_ids=IDS), want, atol=1e-5, rtol=1e-5)
    teacher = LocalTeacher(str(base_dir), "float32", str(adapter), prune=apply_pruning)  # self-distillation
    assert teacher.model.config.num_hidden_layers == 3
    torch.testing.assert_close(_logits(teacher.model, input_ids=IDS), want, atol=1e-5, rtol=1e-5)
    assert len(_actor_teacher(str(base_dir), "float32", str(adapter)).model.model.layers) == 3  # Ray actors
    with pytest.raises(RecipeError, match="pruned from its base model"):
        _ = LocalTeacher(str(base_dir), "float32", str(adapter)).model  # no prune hook: one line, no guess


def test_unsupported_or_wrapped_model_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    with pytest.raises(RecipeError) as e:
        prune_layers(gpt2, [0])
    assert "\n" not in str(e.value)
    assert str(e.value) == ("train.student_layers: cannot prune GPT2LMHeadModel: layer pruning supports Llama-style "
                            "causal LMs (model.model.layers), BART and T5")
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="prune the base model before peft wraps it"):
        prune_layers(wrapped, [0, 5])
    for bad in ([], [3, 1], [0, 0, 2], [0, 6], [-1, 2]):
        with pytest.raises(ValueError, match="increasing indices in 0..5"):
            prune_layers(_tiny_llama(), bad)
    with pytest.raises(ValueError, match="no encoder"):
        prune_layers(_tiny_llama(), [0, 5], encoder_kept=[0])
