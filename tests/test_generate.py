"""Cached generation gives the tokens of an uncached greedy loop; beams; eval over a loader."""
import json

import pytest
import torch

from pixparse.tasks.config import TaskConfig
from pixparse.tasks.registry import create_task


@pytest.fixture(scope="module", params=["cruller_tiny", "pix2struct_tiny", "pali_tiny"])
def task(request):
    torch.manual_seed(0)
    t = create_task(TaskConfig(model_name=request.param, max_length=256)).eval()
    # A random decoder's logits are nearly flat: near-ties would let float noise pick the argmax.
    # Sharpen them so the comparison tests the cache, not rounding.
    with torch.no_grad():
        t.model.text_decoder.model.get_input_embeddings().weight.mul_(8.0)
    return t


def _uncached_greedy(task, batch, i, prompt, max_new):
    """What huggingface/pixparse did: re-run the decoder on the whole prefix every step."""
    eos = task.tokenizer.eos_token_id
    memory, mask = task.model.encode(task.pixels(batch), **task.text_inputs(batch))
    memory, mask = memory[i:i + 1], None if mask is None else mask[i:i + 1]
    ids = torch.tensor([prompt])
    out = []
    for _ in range(max_new):
        logits = task.model.text_decoder(ids, torch.ones_like(ids), memory, mask)[:, -1]
        nxt = int(logits.argmax(-1))
        if nxt == eos:
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def _pages(task, n, seed):
    """A collated batch of n synthetic pages of mixed sizes (packed patches for pix2struct)."""
    import random

    from pixparse.data.config import DataLoaderConfig
    from pixparse.data.synth import find_fonts, synth_document

    rng = random.Random(seed)
    sizes = [(300, 400), (200, 640), (500, 380), (120, 300)]
    samples = [dict(synth_document(rng, sizes[i % 4], find_fonts(), 1), __key__=str(i)) for i in range(n)]
    cfg = DataLoaderConfig(source="unused", num_samples=n)
    pre = task.preprocess(cfg)
    return task.collate(cfg)([item for s in samples for item in pre(s, rng)])


def test_cached_greedy_equals_uncached(task):
    batch = _pages(task, 3, seed=1)
    start = task.tokenizer.convert_tokens_to_ids(task.prompt)
    prompts = [[start], [start], [start, 70]]  # two prompt lengths: two groups
    cached = task.generate(batch, prompts, max_new_tokens=60)
    for i, p in enumerate(prompts):
        assert cached[i] == _uncached_greedy(task, batch, i, p, 60), i
    assert any(len(c) > 10 for c in cached)


def test_beam_search_runs_and_one_beam_is_greedy(task):
    batch = _pages(task, 2, seed=2)
    start = task.tokenizer.convert_tokens_to_ids(task.prompt)
    greedy = task.generate(batch, [[start]] * 2, max_new_tokens=20)
    beams = task.generate(batch, [[start]] * 2, max_new_tokens=20, num_beams=3)
    assert len(beams) == 2 and all(len(b) <= 20 for b in beams)
    assert task.generate(batch, [[start]] * 2, max_new_tokens=20, num_beams=1) == greedy


def test_evaluate_fields_task_end_to_end(shared_data, tmp_path):
    """SROIE shards -> eval loader -> loss, image_gap, generation, parsing and metrics."""
    from pixparse.app.write import write
    from pixparse.data.config import DataEvalConfig
    from pixparse.data.loader import create_eval_loader
    from pixparse.engine.evaluate import evaluate, gather, summarize

    write("sroie", f"{shared_data}/sroie", str(tmp_path), samples_per_shard=2, max_samples=5)
    source = str(tmp_path / "sroie-{000000..000002}.tar")
    task = create_task(TaskConfig(name="finetune_sroie", model_name="cruller_tiny", max_length=256),
                       train_source=source).eval()
    assert "<s_company>" in task.tokenizer.get_vocab() and "</s_total>" in task.tokenizer.get_vocab()
    cfg = DataEvalConfig(source=source, batch_size=2, num_workers=0)
    loader = create_eval_loader(cfg, task.preprocess(cfg, with_meta=True), task.collate(cfg), 0, 1)
    task.cfg = TaskConfig(name="finetune_sroie", model_name="cruller_tiny", max_new_tokens=8)
    records, sums = gather(*evaluate(task, loader, torch.device("cpu")))
    assert [r["key"] for r in records] == sorted(r["key"] for r in records) and len(records) == 5
    assert set(records[0]["reference"]) == {"company", "date", "address", "total"}
    metrics = summarize(task, records, sums, 0.1)
    assert metrics["num_samples"] == 5 and 0.0 <= metrics["field_f1"] < 0.5
    assert abs(metrics["image_gap"]) < 0.05  # an untrained model does not read
    json.dumps(records)  # predictions.jsonl-ready
