"""Trains the toy world's models from scratch, on the CPU, seeded:

    python -m tts_engine.toy.train [--out tts_engine/toy/models] [--seed 0]

- toy-llama-small: a 0.25M-parameter Llama policy, on correct solutions;
- toy-qwen-large: a 2.1M-parameter Qwen2 policy (8.4x larger), on correct solutions;
- toy-prm: a Skywork-layout PRM (Qwen2 backbone, value head `v_head.summary`), started from the
  large policy (as Skywork's and Qwen's PRMs start from their math models) and trained on the small
  policy's own sampled solutions plus as many near misses written from correct ones (`corrupted`),
  each step labelled by the world's checker with its own correctness (right given the steps before
  it as written). The backbone keeps its policy's next-token loss on the right steps meanwhile, so
  fine-tuning does not wash out the arithmetic the head checks against. Measured on the way
  (held-out step AUROC): from the small policy 0.82-0.85 (it shares the policy's blind spots: it
  scored "29 + 1 = 31" above "29 + 1 = 30"); from the large, on the policy's samples alone, 0.84;
  with the near misses and the next-token loss, 0.96 (0.94 on the shipped small policy, whose
  mistakes are fewer and subtler). Prefix labels (correct only if every earlier step is) let a PRM
  score by how deep a step is (later steps are more often wrong), which ranks an early-stopped
  solution above a complete one.

Each policy trains until the running average of its weights reaches a greedy step-checked accuracy
on 640 validation problems (never trained on, not the study's), within a step budget (SPECS says
why a target). The two policies train at once in two processes of one thread each (small matrices
use one core better than two), then the PRM. Each folder is a Hugging Face checkpoint (config.json,
model.safetensors, tokenizer.json with a chat template) plus training.json: parameters, training
tokens (for the study's pre-training FLOPs, 6 x parameters x tokens), steps, seconds and the
model's held-out quality. The policies are trained on a plain loop over transformers' models, with
the loss on the solution only; problems of the default study are never trained on.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from tts_engine.toy import LARGE, MODELS, PRM, SMALL, tokenizer as toy_tokenizer
from tts_engine.toy.world import (MAX_DIGITS, MAX_OPS, MAX_VALUE, Chain, apply, check, problem_set,
                                  sample_chain, split_steps)

DEFAULT_OUT = MODELS
HELD_OUT_SEED = 4321          # the PRM's held-out problems (AUROC); also never trained on
VALIDATION_SEED = 2468        # the policies' stopping problems; never trained on
VALIDATION_COUNT = 640


@dataclass
class PolicySpec:
    arch: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    target: float         # greedy step-checked accuracy on the validation problems that ends training
    max_steps: int        # the budget, if the target is never reached
    lr: float
    batch: int = 64
    ema: float = 0.995    # the weights checked and kept: an average over the last ~200 steps
    check_from: int = 400
    check_every: int = 50
    check_near: int = 20  # within 0.15 of the target


# Why a target and not a step count: a policy's strength jumps with training length (the small one,
# greedy step-checked accuracy on the study problems, one seed: 1,500 steps 0.68, 1,600 0.77, 1,700
# 0.82, 1,800 0.89, 3,000 0.99), and where on the jump a fixed count lands is decided by float
# rounding, which differs between CPUs: with one seed the small one scored 0.77 or 0.93 at 1,600
# steps and the large one 0.81 or 0.48 at 1,000 (benchmarks/RESULTS.md). Training until a
# validation accuracy is reached (as MLPerf trains to a target quality) fixes each policy's strength
# on any machine, the small one clearly below the large one, as the paper's small models are. The
# raw weights swing by up to 0.2 in accuracy between checks 50 steps apart at this learning rate,
# so the weights checked and kept are an exponential moving average, which moves smoothly.
SPECS = {SMALL: PolicySpec("llama", 64, 4, 4, 2, 256, target=0.72, max_steps=3000, lr=3e-3),
         LARGE: PolicySpec("qwen2", 128, 8, 4, 4, 512, target=0.80, max_steps=2000, lr=1.5e-3)}
PRM_PROBLEMS, PRM_SAMPLES, PRM_EPOCHS, PRM_LR = 8000, 4, 3, 1e-3
PRM_SYNTHETIC, PRM_LM = 1.0, 0.5


def excluded() -> set[str]:
    from tts_engine.toy.world import study_problems
    return {c.text for c in study_problems() + held_out() + validation()}


def held_out() -> list[Chain]:
    return problem_set(320, HELD_OUT_SEED)


def validation() -> list[Chain]:
    return problem_set(VALIDATION_COUNT, VALIDATION_SEED)


def training_chains(rng: random.Random, count: int, skip: set[str]) -> list[Chain]:
    """`count` chains of one random length (so a batch pads little), digits drawn per chain."""
    ops, out = rng.randint(1, MAX_OPS), []
    while len(out) < count:
        c = sample_chain(rng, ops, rng.randint(1, MAX_DIGITS))
        if c.text not in skip:
            out.append(c)
    return out


def prompt_text(problem: str) -> str:
    """The chat template's rendering of one user turn, ready for the assistant."""
    return f"{toy_tokenizer.BOS}{toy_tokenizer.USER}{problem}\n{toy_tokenizer.ASSISTANT}"


def lm_batch(tok, chains: list[Chain], pad: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Right-padded ids and labels (-100 outside the solution and its EOS); real token count."""
    prompts = tok.encode_batch([prompt_text(c.text) for c in chains], add_special_tokens=False)
    answers = tok.encode_batch(["".join(c.steps) + toy_tokenizer.EOS for c in chains],
                               add_special_tokens=False)
    rows = [(p.ids, a.ids) for p, a in zip(prompts, answers)]
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad)
    labels = torch.full((len(rows), width), -100)
    for i, (p, a) in enumerate(rows):
        ids[i, :len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
    return ids, labels, sum(len(p) + len(a) for p, a in rows)


def schedule(step: int, total: int, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def build_policy(spec: PolicySpec, vocab: int, tok):
    import transformers
    common = dict(vocab_size=vocab, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                  num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                  intermediate_size=spec.intermediate, max_position_embeddings=256, tie_word_embeddings=True,
                  rope_theta=10000.0, bos_token_id=tok.token_to_id(toy_tokenizer.BOS),
                  eos_token_id=tok.token_to_id(toy_tokenizer.EOS),
                  pad_token_id=tok.token_to_id(toy_tokenizer.PAD))
    if spec.arch == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))


def train_policy(name: str, out: str, seed: int, scale: float = 1.0) -> None:
    """Trains until the averaged weights reach the spec's validation accuracy (or its budget, times
    `scale`), warm-up then a constant learning rate, and saves those averaged weights."""
    torch.manual_seed(seed)
    spec, rng = SPECS[name], random.Random(f"{seed}/{name}")
    budget = max(1, round(spec.max_steps * scale))
    tok = toy_tokenizer.build(seed)
    model = build_policy(spec, tok.get_vocab_size(), tok)
    average = copy.deepcopy(model)
    skip, pad, chains = excluded(), tok.token_to_id(toy_tokenizer.PAD), validation()
    folder = os.path.join(out, name)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.01)
    tokens, start, log, checks, next_check = 0, time.perf_counter(), [], [], spec.check_from
    model.train()
    for step in range(budget):
        for group in opt.param_groups:
            group["lr"] = spec.lr * min(1.0, (step + 1) / 100)
        ids, labels, n = lm_batch(tok, training_chains(rng, spec.batch, skip), pad)
        logits = model(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += n
        with torch.no_grad():     # the average's early steps weigh more, so it leaves the init fast
            decay = min(spec.ema, (step + 1) / (step + 10))
            for a, p in zip(average.parameters(), model.parameters()):
                a.lerp_(p, 1 - decay)
        if step % 100 == 0:
            log.append((step, round(loss.item(), 4)))
            print(f"{name} step {step} loss {loss.item():.4f} {time.perf_counter() - start:.0f}s", flush=True)
        if step + 1 == next_check:
            save_policy(average, tok, folder)
            acc = accuracy(greedy_accuracy(folder, chains))
            checks.append((step + 1, acc))
            print(f"{name} step {step + 1} validation accuracy {acc:.3f}", flush=True)
            if acc >= spec.target:
                break
            next_check += spec.check_near if acc >= spec.target - 0.15 else spec.check_every
    save_policy(average, tok, folder)
    params = sum(p.numel() for p in model.parameters())
    info = {"parameters": params, "training_tokens": tokens, "steps": step + 1, "batch": spec.batch,
            "lr": spec.lr, "seed": seed, "seconds": round(time.perf_counter() - start, 1), "loss": log,
            "spec": spec.__dict__, "validation_accuracy": checks}
    info["greedy_accuracy"] = greedy_accuracy(folder)
    write_info(folder, info)


def save_policy(model, tok, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    toy_tokenizer.save(tok, folder)


def write_info(folder: str, info: dict) -> None:
    with open(os.path.join(folder, "training.json"), "w") as f:
        json.dump(info, f, indent=1)


def accuracy(by_ops: dict[str, float]) -> float:
    """Over a problem set spread evenly over the operation counts."""
    return round(sum(by_ops.values()) / len(by_ops), 4)


def greedy_accuracy(folder: str, chains: list[Chain] | None = None) -> dict[str, float]:
    """Greedy step-checked accuracy per number of operations, on the study problems by default."""
    from tts_engine import LLM, SamplingParams
    from tts_engine.toy.world import study_problems
    llm = LLM(folder, dtype="float32", device="cpu")
    chains = chains or study_problems()
    outs = llm.generate([prompt_text(c.text) for c in chains], SamplingParams(temperature=0, max_tokens=200),
                        use_tqdm=False)
    by_ops: dict[int, list[bool]] = {}
    for c, o in zip(chains, outs):
        steps = split_steps(o.outputs[0].text)
        by_ops.setdefault(len(c.ops), []).append(all(check(c.text, steps)) and len(steps) == len(c.steps))
    return {f"ops={k}": round(sum(v) / len(v), 3) for k, v in sorted(by_ops.items())}


def sample_solutions(folder: str, chains: list[Chain], n: int, seed: int) -> list[tuple[str, list[str]]]:
    """(problem, steps) of the policy's distinct sampled solutions (temperature 0.7, as in search)."""
    from tts_engine import LLM, SamplingParams
    llm = LLM(folder, dtype="float32", device="cpu", seed=seed)
    outs = llm.generate([prompt_text(c.text) for c in chains],
                        SamplingParams(n=n, temperature=0.7, max_tokens=200, seed=seed), use_tqdm=False)
    data = []
    for c, o in zip(chains, outs):
        for text in dict.fromkeys(x.text for x in o.outputs):
            steps = split_steps(text)
            if steps:
                data.append((c.text, steps))
    return data


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a correct step outscores an incorrect one (ties count half)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    pos = sum(labels)
    neg = len(labels) - pos
    if not pos or not neg:
        return float("nan")
    return (sum(r for r, y in zip(ranks, labels) if y) - pos * (pos + 1) / 2) / (pos * neg)


def prm_auroc(prm_folder: str, data: list[tuple[str, list[str]]]) -> tuple[float, int, int]:
    from tts_engine import PRM
    prm = PRM(prm_folder, dtype="float32", device="cpu")
    scores = prm.score([q for q, _ in data], [s for _, s in data])
    flat_s, flat_y = [], []
    for (q, steps), sc in zip(data, scores):
        flat_s += sc
        flat_y += check(q, steps, prefix=False)
    return auroc(flat_s, flat_y), sum(flat_y), len(flat_y) - sum(flat_y)


def corrupted(chain: Chain, rng: random.Random) -> list[str]:
    """A solution of `chain` with one mistake of a kind the small policy makes: a wrong operand (a
    neighbour's, as when it loses its place), a flipped sign, an arithmetic slip, or a final answer
    that is not the last result. The steps after it are right given it as written, or the solution
    stops there."""
    v, ops, b = chain.values, list(chain.ops), list(chain.operands[1:])
    kind = rng.choice(("operand", "sign", "slip", "slip", "answer"))
    if kind == "answer":
        wrong = v[-1] + rng.choice((-10, -1, 1, 10))
        return chain.steps[:-1] + [f"The answer is \\boxed{{{wrong}}}."] if 0 <= wrong else chain.steps
    i = rng.randrange(len(ops))
    a, o, x = v[i], ops[i], b[i]
    if kind == "operand":
        others = [y for j, y in enumerate(b) if j != i and y != x] or [x + rng.choice((-1, 1))]
        x = rng.choice(others)
    elif kind == "sign":
        o = "+" if o == "-" else "-"
    c = apply(a, o, x)
    if kind == "slip" or not 0 <= c <= MAX_VALUE:
        o, x = ops[i], b[i]
        c = v[i + 1] + rng.choice((-11, -10, -9, -2, -1, 1, 2, 9, 10, 11))
    if not 0 <= c <= MAX_VALUE:
        return chain.steps[:i]
    steps = chain.steps[:i] + [f"{a} {o} {x} = {c}\n\n"]
    if rng.random() < 0.5:
        return steps
    for j in range(i + 1, len(ops)):
        nxt = apply(c, ops[j], b[j])
        if not 0 <= nxt <= MAX_VALUE:
            return steps
        steps.append(f"{c} {ops[j]} {b[j]} = {nxt}\n\n")
        c = nxt
    return steps + [f"The answer is \\boxed{{{c}}}."]


def prm_data(small: str, seed: int, scale: float, rng: random.Random) -> list[tuple[str, list[str]]]:
    """The small policy's own sampled solutions, plus as many again written by `corrupted` (more
    of the near misses a PRM must tell apart)."""
    skip = excluded()
    chains = []
    count = max(16, round(PRM_PROBLEMS * scale))
    while len(chains) < count:
        chains += training_chains(rng, 16, skip)
    data = sample_solutions(small, chains[:count], PRM_SAMPLES, seed)
    synthetic = []
    while len(synthetic) < len(data) * PRM_SYNTHETIC:
        synthetic += [(c.text, corrupted(c, rng)) for c in training_chains(rng, 16, skip)]
    return data + [(q, s) for q, s in synthetic if s]


def train_prm(out: str, seed: int, scale: float = 1.0) -> None:
    """The Skywork layout: Qwen2 backbone + v_head.summary (hidden -> 1), sigmoid at each step's
    newline, inputs written exactly as tts_engine.prm's Skywork family writes them. Alongside the
    head's loss, the backbone keeps predicting the tokens of steps that are right (its policy's
    loss), so fine-tuning does not wash out the arithmetic the head must check against."""
    import transformers
    from safetensors.torch import save_file

    from tts_engine.prm import Skywork
    from tts_engine.tokenizer import Tokenizer
    torch.manual_seed(seed)
    small = os.path.join(out, SMALL)
    start = time.perf_counter()
    rng = random.Random(f"{seed}/prm")
    data = prm_data(small, seed, scale, rng)
    family = Skywork(Tokenizer.from_dir(small))
    encoded = []
    for q, steps in data:
        ids, positions = family.encode(q, steps)
        prefix = check(q, steps, prefix=True)
        good = prefix.index(False) if False in prefix else len(steps)
        # the policy's loss on the steps up to the first wrong one, not on the problem's numbers
        lm = (len(family.encode(q, [])[0]), positions[good - 1] + 1 if good else 0)
        encoded.append((ids, positions, check(q, steps, prefix=False), lm))
    positive = sum(sum(e[2]) for e in encoded) / sum(len(e[2]) for e in encoded)
    print(f"prm data: {len(encoded)} solutions, {positive:.2f} of steps correct", flush=True)
    large = os.path.join(out, LARGE)
    policy = transformers.Qwen2ForCausalLM.from_pretrained(large, dtype=torch.float32)
    backbone = policy.model
    head = torch.nn.Linear(backbone.config.hidden_size, 1)
    torch.nn.init.normal_(head.weight, std=0.02)
    torch.nn.init.zeros_(head.bias)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=PRM_LR, betas=(0.9, 0.98), weight_decay=0.01)
    pad = family.tok.pad_token_id
    batch, tokens, step = 64, 0, 0
    total = PRM_EPOCHS * math.ceil(len(encoded) / batch)
    backbone.train()
    for epoch in range(PRM_EPOCHS):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        order.sort(key=lambda i: len(encoded[i][0]) // 16 + rng.random())   # similar lengths together
        batches = [order[i:i + batch] for i in range(0, len(order), batch)]
        rng.shuffle(batches)
        for part in batches:
            for group in opt.param_groups:
                group["lr"] = PRM_LR * schedule(step, total, warmup=30)
            width = max(len(encoded[i][0]) for i in part)
            ids = torch.full((len(part), width), pad)
            lm = torch.full((len(part), width), -100)
            rows, cols, target = [], [], []
            for r, i in enumerate(part):
                seq, positions, labels, (lo, hi) = encoded[i]
                ids[r, :len(seq)] = torch.tensor(seq)
                lm[r, lo:hi] = torch.tensor(seq[lo:hi])
                rows += [r] * len(positions)
                cols += positions
                target += [float(y) for y in labels]
                tokens += len(seq)
            hidden = backbone(input_ids=ids).last_hidden_state
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(hidden[rows, cols])[:, 0],
                                                                        torch.tensor(target))
            if PRM_LM:
                logits = policy.lm_head(hidden[:, :-1])
                loss = loss + PRM_LM * torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                                         lm[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % 50 == 0 or step == total - 1:
                print(f"prm step {step}/{total} loss {loss.item():.4f} {time.perf_counter() - start:.0f}s",
                      flush=True)
            step += 1
    folder = os.path.join(out, PRM)
    os.makedirs(folder, exist_ok=True)
    state = {f"model.{k}": v.detach().contiguous() for k, v in backbone.state_dict().items()}
    state.update({"v_head.summary.weight": head.weight.detach().contiguous(),
                  "v_head.summary.bias": head.bias.detach().contiguous()})
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    config = backbone.config.to_dict()
    config.pop("_name_or_path", None)        # where it was trained, not part of the model
    config.update(architectures=["Qwen2ForPrmModel"], model_type="qwen2", tie_word_embeddings=False)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):     # its base model's tokenizer
        shutil.copy(os.path.join(large, name), folder)
    base_info = json.load(open(os.path.join(large, "training.json")))
    held = sample_solutions(small, held_out(), PRM_SAMPLES, seed + 1)
    area, pos, neg = prm_auroc(folder, held)
    # started from the large policy: its training counts too
    write_info(folder, {"parameters": sum(p.numel() for p in params),
                        "training_tokens": base_info["training_tokens"] + tokens, "finetune_tokens": tokens,
                        "initialized_from": LARGE, "solutions": len(encoded),
                        "positive_steps": round(positive, 3),
                        "near_misses_per_sample": PRM_SYNTHETIC, "next_token_loss_weight": PRM_LM,
                        "epochs": PRM_EPOCHS, "lr": PRM_LR, "seed": seed,
                        "seconds": round(time.perf_counter() - start, 1),
                        "held_out_step_auroc": None if math.isnan(area) else round(area, 4),
                        "held_out_steps": {"correct": pos, "incorrect": neg}})
    print(f"prm held-out step AUROC {area:.4f} ({pos} correct, {neg} incorrect steps)", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tts_engine.toy.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="folder for the three model folders")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage", default="all", choices=("all", SMALL, LARGE, PRM))
    ap.add_argument("--scale", type=float, default=1.0,
                    help="the policies' step budgets and the PRM's data x this (tests)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.stage == "all":
        # both policies at once, one core each; then the PRM, which needs both
        command = [sys.executable, "-m", "tts_engine.toy.train", "--out", args.out, "--seed", str(args.seed),
                   "--scale", str(args.scale), "--stage"]
        if any(p.wait() for p in [subprocess.Popen(command + [name]) for name in (SMALL, LARGE)]):
            sys.exit("a policy's training failed")
        torch.set_num_threads(2)
        train_prm(args.out, args.seed, args.scale)
    elif args.stage == PRM:
        torch.set_num_threads(2)         # as in "all" (same numerics)
        train_prm(args.out, args.seed, args.scale)
    else:
        train_policy(args.stage, args.out, args.seed, args.scale)


if __name__ == "__main__":
    main()
