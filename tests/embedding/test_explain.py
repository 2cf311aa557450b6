"""Pair explanations: faithfulness on a really trained model and real pairs, then the plumbing (twin, shapes,
checkpoints, rendering, the REST router and `cxr search --explain`)."""

from __future__ import annotations

import copy
import csv
import io
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from services.embedding import (
    SHAPES,
    BatchEncoder,
    CxrEncoder,
    EncoderConfig,
    create_encoder,
    load_checkpoint,
    save_checkpoint,
)
from services.embedding.explain import Explainer, PairExplanation, sliding_masks
from services.embedding.overlay import normalise_map, overlay_png, pair_png

CLASSES = ("covid19", "normal", "pneumonia_bacterial", "pneumonia_viral")
FRACTIONS = (0.05, 0.1, 0.2)  # share of the patch grid deleted, per point of the deletion curve


# ---- a model trained here, briefly, with the project's own loop -------------------------------------------
@pytest.fixture(scope="session")
def trained_run(cxr_public: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vit-tiny at 96 px (a 6x6 patch grid), 100 steps on 150 images per class (about a minute, one thread).
    CXR_EXPLAIN_MODEL=<checkpoint dir> runs the same tests on a longer-trained run (its split's test images)."""
    import os

    if os.environ.get("CXR_EXPLAIN_MODEL"):
        return Path(os.environ["CXR_EXPLAIN_MODEL"])
    from services.training.config import TrainConfig
    from services.training.loop import Trainer

    root = tmp_path_factory.mktemp("explain-train")
    with (cxr_public / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    random.Random(0).shuffle(rows)
    chosen = [r for c in CLASSES for r in [r for r in rows if r["label"] == c][:150]]
    for row in chosen:
        (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(cxr_public / row["path"], root / row["path"])
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    cfg = TrainConfig(
        manifest=root / "manifest.csv",
        out_dir=root / "run",
        shape="vit-tiny",
        image_size=96,
        batch_size=32,
        steps=100,  # about 60 s on one free core; no time bound, so the schedule (and the model) is reproducible
        warmup_steps=10,
        val_every=10**6,  # validate once, at the end
        ckpt_every=10**6,
        min_class_images=2,
        workers=1,
    )
    result = Trainer(cfg).run()
    print(f"\nexplain model: {result.steps} steps, {result.elapsed_s:.0f} s, val MAP@R {result.best_val_map_at_r:.3f}")
    assert result.best_val_map_at_r > 0.15, result  # 0.221 here, chance about 0.09: a model worth explaining
    return result.out_dir


@dataclass
class Pairs:
    explainer: Explainer
    images: torch.Tensor  # (N, 1, S, S) test-split images
    emb: torch.Tensor
    queries: np.ndarray
    top1: np.ndarray  # each query's nearest image of another patient: what a search returns
    far: np.ndarray  # each query's least similar image


@pytest.fixture(scope="module")
def pairs(trained_run: Path, cxr_public: Path) -> Pairs:
    from services.manifest import read_manifest
    from services.splits import read_split, split_rows
    from services.training.data import load_image_cache

    encoder = load_checkpoint(trained_run)  # from disk, as the API and the CLI load it
    manifest = trained_run.parent / "manifest.csv"
    if not manifest.exists():  # a run trained on the public set itself (CXR_EXPLAIN_MODEL)
        manifest = cxr_public / "manifest.csv"
    test_rows = split_rows(read_manifest(manifest), read_split(trained_run / "split.json"), manifest.parent)["test"]
    cache = load_image_cache(test_rows[:120], encoder.config.image_size, workers=1)
    images = torch.from_numpy(cache.images).float().div(255).unsqueeze(1)
    explainer = Explainer(encoder)
    emb = explainer.embed(images)
    sims = emb @ emb.T
    same_patient = torch.from_numpy(cache.groups[:, None] == cache.groups[None, :])
    queries = np.random.default_rng(0).choice(len(images), 16, replace=False)
    top1 = sims.masked_fill(same_patient, -2)[queries].argmax(1).numpy()
    far = sims.masked_fill(same_patient, 2)[queries].argmin(1).numpy()
    return Pairs(explainer, images, emb, queries, top1, far)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x: np.ndarray) -> np.ndarray:
        _, inverse, counts = np.unique(x.ravel(), return_inverse=True, return_counts=True)
        return (np.cumsum(counts) - (counts - 1) / 2)[inverse]

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def _mean_spearman(maps_a: np.ndarray, maps_b: np.ndarray) -> float:
    return float(np.mean([_spearman(a, b) for a, b in zip(maps_a, maps_b, strict=True)]))


def _delete(image: torch.Tensor, patches: np.ndarray, patch: int, grid: int) -> torch.Tensor:
    out = image.clone()
    for k in patches:
        r, c = divmod(int(k), grid)
        out[:, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = image.mean()
    return out


def _deletion_curve(p: Pairs, maps: np.ndarray, side: np.ndarray, other: np.ndarray) -> dict[float, tuple]:
    """Mean cosine drop when the top-relevance patches of `side` are deleted, vs random patches of equal area."""
    ex, rng = p.explainer, np.random.default_rng(1)
    grid, patch = ex.grid, ex.config.patch_size
    curve = {}
    for f in FRACTIONS:
        n = max(1, round(f * grid * grid))
        top, rand = [], []
        for m, a, b in zip(maps, side, other, strict=True):
            base = float(p.emb[a] @ p.emb[b])
            batch = [_delete(p.images[a], np.argsort(-m.ravel())[:n], patch, grid)]
            batch += [_delete(p.images[a], rng.choice(grid * grid, n, replace=False), patch, grid) for _ in range(8)]
            cos = (ex.embed(torch.stack(batch)) @ p.emb[b]).numpy()
            top.append(base - cos[0])
            rand.append(base - cos[1:].mean())
        curve[f] = (float(np.mean(top)), float(np.mean(rand)))
    return curve


# ---- faithfulness ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_deleting_top_relevance_patches_lowers_cosine_more_than_random(pairs: Pairs):
    q_maps, r_maps, _ = pairs.explainer.relevance_maps(pairs.images[pairs.queries], pairs.images[pairs.top1])
    for name, maps, side, other in (
        ("query", q_maps, pairs.queries, pairs.top1),
        ("result", r_maps, pairs.top1, pairs.queries),
    ):
        curve = _deletion_curve(pairs, maps, side, other)
        print(f"\n{name} side, mean cosine drop (top vs random) over {len(side)} pairs:", end="")
        for f, (top, rand) in curve.items():
            print(f" {f:.0%}: {top:.4f} vs {rand:.4f};", end="")
            assert top > rand, (name, f, curve)
        top_area = sum(t for t, _ in curve.values())
        rand_area = sum(r for _, r in curve.values())
        assert top_area > 1.5 * rand_area, (name, curve)


@pytest.mark.slow
def test_map_changes_when_the_result_changes(pairs: Pairs):
    q = pairs.images[pairs.queries]
    near, _, s_near = pairs.explainer.relevance_maps(q, pairs.images[pairs.top1])
    far, _, s_far = pairs.explainer.relevance_maps(q, pairs.images[pairs.far])
    again, _, _ = pairs.explainer.relevance_maps(q, pairs.images[pairs.top1])
    np.testing.assert_allclose(again, near, rtol=1e-4, atol=1e-7)  # a difference below is not noise
    assert s_near.mean() > s_far.mean()
    rho = _mean_spearman(near, far)
    print(f"\nquery map with the nearest vs the least similar result: mean Spearman {rho:.3f}")
    assert rho < 0.5


@pytest.mark.slow
def test_map_degrades_under_weight_randomisation(pairs: Pairs, trained_run: Path):
    """Adebayo et al. 2018: a map that survives randomising the weights explains the image, not the model."""
    q, r = pairs.images[pairs.queries], pairs.images[pairs.top1]
    trained_q, trained_r, _ = pairs.explainer.relevance_maps(q, r)
    config = pairs.explainer.config
    random_model = create_encoder(config.shape, image_size=config.image_size, embed_dim=config.embed_dim, seed=7)
    cascade = load_checkpoint(trained_run)  # cascading: the top half of the layers and the head re-drawn
    state, fresh = cascade.state_dict(), random_model.state_dict()
    top = tuple(f"vit.layers.{i}." for i in range(config.num_layers // 2, config.num_layers))
    cascade.load_state_dict(
        {k: fresh[k] if k.startswith((*top, "vit.layernorm", "head")) else v for k, v in state.items()}
    )
    results = {}
    for name, model in (("random", random_model.eval()), ("top half random", cascade.eval())):
        mq, mr, _ = Explainer(model).relevance_maps(q, r)
        results[name] = (_mean_spearman(trained_q, mq), _mean_spearman(trained_r, mr))
    print(f"\nmean Spearman with the trained model's maps (query, result): {results}")
    assert max(results["random"]) < 0.5
    assert max(results["top half random"]) < 0.9


@pytest.mark.slow
def test_relevance_agrees_with_the_occlusion_oracle(pairs: Pairs):
    ex, n = pairs.explainer, 8
    q, r = pairs.images[pairs.queries[:n]], pairs.images[pairs.top1[:n]]
    q_rel, r_rel, _ = ex.relevance_maps(q, r)
    occ = [ex.explain(q[i, 0].numpy(), r[i, 0].numpy(), method="occlusion") for i in range(n)]
    rho_q = _mean_spearman(q_rel, np.stack([o.query_map for o in occ]))
    rho_r = _mean_spearman(r_rel, np.stack([o.result_map for o in occ]))
    print(f"\nrelevance vs occlusion, mean Spearman over {n} pairs: query {rho_q:.3f}, result {rho_r:.3f}")
    assert rho_q > 0.1 and rho_r > 0.1


# ---- the eager twin, every shape, checkpoints from disk, and a naive twin of the relevance rule -----------
def test_twin_shares_weights_and_leaves_normal_inference_alone(tiny_encoder, images):
    before = tiny_encoder(images).detach()
    ex = Explainer(BatchEncoder(tiny_encoder))
    assert tiny_encoder.vit.config._attn_implementation == "sdpa"
    assert ex.model.vit.config._attn_implementation == "eager"
    for (name, p), (_, q) in zip(tiny_encoder.named_parameters(), ex.model.named_parameters(), strict=True):
        assert p.data_ptr() == q.data_ptr(), name  # shared storage, not a copy
    out = ex.explain(images[0, 0].numpy(), images[1, 0].numpy())
    assert all(p.grad is None and p.requires_grad for p in tiny_encoder.parameters())
    torch.testing.assert_close(tiny_encoder(images).detach(), before)
    torch.testing.assert_close(ex.model(images), before, atol=1e-5, rtol=1e-4)  # eager == SDPA
    assert out.query_map.shape == out.result_map.shape == (2, 2)
    assert (out.query_map >= 0).all() and out.query_map.max() > 0
    assert out.similarity == pytest.approx(float(before[0] @ before[1]), abs=1e-5)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_registry_shape_explains(shape: str):
    encoder = CxrEncoder(EncoderConfig(shape=shape, image_size=32)).eval()
    rng = np.random.default_rng(0)
    a, b, c = (rng.random((40, 36)).astype(np.float32) for _ in range(3))  # any size: resized inside
    out = Explainer(encoder).explain_many(a, [b, c])
    assert [o.query_map.shape for o in out] == [(2, 2), (2, 2)]
    assert all(np.isfinite(o.query_map).all() and np.isfinite(o.result_map).all() for o in out)


def test_hf_init_and_its_checkpoint_from_disk_give_the_same_maps(hf_vit_dir: Path, tmp_path: Path, images):
    encoder = create_encoder(init=hf_vit_dir, image_size=32, embed_dim=32, seed=0).eval()  # 3 channels, patch 8
    loaded = load_checkpoint(save_checkpoint(encoder, tmp_path / "ckpt"))
    a, b = images[0, 0].numpy(), images[1, 0].numpy()
    fresh, disk = Explainer(encoder).explain(a, b), Explainer(loaded).explain(a, b)
    assert fresh.query_map.shape == (4, 4)
    np.testing.assert_allclose(disk.query_map, fresh.query_map, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(disk.result_map, fresh.result_map, rtol=1e-4, atol=1e-6)


def _naive_relevance(encoder: CxrEncoder, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Chefer's rule written out for one image: transformers' own output_attentions, one pair per pass."""
    model = copy.deepcopy(encoder)
    model.vit.config._attn_implementation = "eager"
    x = (torch.stack([a, b]) - model.config.norm_mean) / model.config.norm_std
    out = model.vit(pixel_values=x, output_attentions=True)
    for att in out.attentions:
        att.retain_grad()
    emb = torch.nn.functional.normalize(model.head(out.last_hidden_state[:, 0]), dim=-1)
    (emb[0] @ emb[1].detach()).backward()
    n = out.attentions[0].shape[-1]
    relevance = torch.eye(n)
    for att in out.attentions:
        cam = (att.grad[0] * att[0]).clamp(min=0).mean(0)
        relevance = relevance + cam @ relevance
    return relevance[0, 1:].detach().reshape(2, 2).numpy()


def test_batched_relevance_matches_a_naive_one_pair_implementation(tiny_encoder, images):
    a, partners = images[0], images[1:4]
    q_maps, r_maps, _ = Explainer(tiny_encoder).relevance_maps(a.expand(3, -1, -1, -1), partners)
    for i in range(3):
        np.testing.assert_allclose(q_maps[i], _naive_relevance(tiny_encoder, a, partners[i]), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(r_maps[i], _naive_relevance(tiny_encoder, partners[i], a), rtol=1e-4, atol=1e-6)


# ---- what the maps look like outside ----------------------------------------------------------------------
def test_json_maps_and_png_overlays():
    from PIL import Image

    heat = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    ex = PairExplanation(heat, np.zeros((2, 2), np.float32), 0.75, "relevance", 16, 32)
    doc = json.loads(json.dumps(ex.to_json()))
    assert doc["grid"] == [2, 2] and doc["similarity"] == 0.75
    assert doc["query"]["map"] == [[0.0, 0.3333], [0.6667, 1.0]] and doc["result"]["map"] == [[0, 0], [0, 0]]

    grey = np.full((300, 200), 0.5, dtype=np.float32)  # tall, like a film
    png = Image.open(io.BytesIO(overlay_png(grey, heat)))
    assert png.format == "PNG" and png.mode == "RGB" and png.size == (200, 300)
    rgb = np.asarray(png).astype(int)
    assert len(set(rgb[0, 0])) == 1  # least relevant corner: the grey film shows through
    assert len(set(rgb[-1, -1])) == 3 and rgb[-1, -1].tolist() != rgb[0, 0].tolist()  # most relevant: coloured
    assert max(Image.open(io.BytesIO(overlay_png(np.zeros((1200, 800), np.float32), heat))).size) == 512
    both = Image.open(io.BytesIO(pair_png(grey, grey[:100], ex)))
    assert both.size == (200 + 8 + 200, 300)
    assert normalise_map(np.ones((3, 3))).max() == 0


def test_sliding_masks_cover_the_image_with_about_100_windows():
    masks = sliding_masks(96, 100, 16)
    assert masks.shape == (100, 96, 96) and masks.sum(dim=(1, 2)).unique().tolist() == [16 * 16]
    assert (masks.sum(0) > 0).all()


# ---- the REST router and `cxr search --explain`, on the real pipeline and embedded store ------------------
@pytest.fixture()
def indexed(data_dir: Path, tiny_checkpoint: Path, public_sample: Path):
    """A Runtime over 24 indexed public images (random-init 32 px model: fast), and id by file name."""
    from services.config import Settings
    from services.manifest import read_manifest
    from services.pipeline import IngestOptions, Ingestor, Runtime, build_items
    from services.pipeline.stored_image import resolve_source

    rt = Runtime(Settings(), model_path=tiny_checkpoint)
    items, _ = build_items([], manifest=read_manifest(public_sample / "manifest.csv"))
    opts = IngestOptions(collection=rt.settings.collection, batch_size=8, decode_workers=1)
    assert Ingestor(rt.encoder, rt.store, opts, salt=rt.settings.salt, refs=rt.ledger.put_refs).run(items).indexed == 24
    ids = {resolve_source(rt.ledger, p.payload).name: p.id for p in rt.store.scroll(rt.settings.collection)}
    yield rt, ids
    rt.close()


@pytest.fixture()
def client(indexed):
    """The real app over the indexed runtime, started and ready."""
    from fastapi.testclient import TestClient

    from services.api.app import create_app

    rt = indexed[0]
    with TestClient(create_app(rt.settings, runtime=rt)) as c:
        assert c.app.state.api.wait_ready(60).ready
        yield c


def test_get_explain_json_and_png_for_two_indexed_points(client, indexed):
    from PIL import Image

    rt, ids = indexed
    q, r = sorted(ids.values())[:2]
    res = client.get("/v1/explain", params={"query": q, "result": r})
    assert res.status_code == 200, res.text
    doc = res.json()
    assert doc["query"]["id"] == q and doc["result"]["id"] == r and doc["grid"] == [2, 2]
    assert all(0 <= v <= 1 for row in doc["query"]["map"] + doc["result"]["map"] for v in row)
    stored = {p.id: p.vector for p in rt.store.retrieve(rt.settings.collection, [q, r], with_vectors=True)}
    assert doc["similarity"] == pytest.approx(float(stored[q] @ stored[r]), abs=0.02)  # index ran in bf16

    png = client.get("/v1/explain", params={"query": q, "result": r, "format": "png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).format == "PNG"
    one = client.get("/v1/explain", params={"query": q, "result": r, "format": "png", "image": "result"})
    assert Image.open(io.BytesIO(one.content)).width < Image.open(io.BytesIO(png.content)).width
    occ = client.get("/v1/explain", params={"query": q, "result": r, "method": "occlusion"})
    assert occ.status_code == 200 and occ.json()["method"] == "occlusion"


def test_get_explain_errors(client, indexed, tmp_path: Path, public_sample: Path):
    from services.pipeline import IngestOptions, Ingestor, build_items
    from services.pipeline.stored_image import resolve_source

    rt, ids = indexed
    known = next(iter(ids.values()))
    missing = "00000000-0000-4000-8000-000000000000"
    assert client.get("/v1/explain", params={"query": missing, "result": known}).status_code == 404
    assert client.get("/v1/explain", params={"query": "../../etc/passwd", "result": known}).status_code == 422
    gone = tmp_path / "gone" / "normal" / "film.jpg"  # an indexed point whose file was deleted since
    gone.parent.mkdir(parents=True)
    shutil.copy(next((public_sample / "images" / "normal").iterdir()), gone)
    gone.write_bytes(gone.read_bytes() + b"\0")  # new content hash, so a new point
    opts = IngestOptions(collection=rt.settings.collection, batch_size=8, decode_workers=1)
    Ingestor(rt.encoder, rt.store, opts, salt=rt.settings.salt, refs=rt.ledger.put_refs).run(
        build_items([gone.parent.parent])[0]
    )
    points = rt.store.scroll(rt.settings.collection)
    gone_id = next(p.id for p in points if resolve_source(rt.ledger, p.payload) == gone)
    gone.unlink()
    res = client.get("/v1/explain", params={"query": known, "result": gone_id})
    assert res.status_code == 409 and "no longer kept" in res.json()["detail"]

    from fastapi.testclient import TestClient

    from services.api.app import create_app

    starting = create_app(rt.settings, runtime=rt)  # not started (no lifespan): the model is not ready yet
    assert TestClient(starting).get("/v1/explain", params={"query": known, "result": known}).status_code == 503


def test_post_explain_with_an_uploaded_query(client, indexed, public_sample: Path):
    _, ids = indexed
    path = next((public_sample / "images" / "covid19").iterdir())
    result = next(iter(ids.values()))
    data = path.read_bytes()
    res = client.post("/v1/explain", params={"result": result}, files={"file": ("q.jpg", data, "image/jpeg")})
    assert res.status_code == 200, res.text
    assert res.json()["query"]["id"] is None and res.json()["result"]["id"] == result
    text = client.post("/v1/explain", params={"result": result}, files={"file": ("q.png", b"hello", "image/png")})
    assert text.status_code == 415
    cut = client.post("/v1/explain", params={"result": result}, files={"file": ("q.jpg", data[:300], "image/jpeg")})
    assert cut.status_code == 422 and cut.json()["reason"] == "truncated", cut.text


def test_cxr_search_explain_writes_overlays(data_dir, tiny_checkpoint, public_sample: Path, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("CXR_MODEL", str(tiny_checkpoint))
    runner = CliRunner()
    assert runner.invoke(app, ["index", "--manifest", str(public_sample / "manifest.csv")]).exit_code == 0
    query, out = next((public_sample / "images" / "normal").iterdir()), tmp_path / "why"
    res = runner.invoke(app, ["search", str(query), "--k", "3", "--json", "--explain", str(out)])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)  # stdout stays the result JSON; the note about the overlays goes to stderr
    records = json.loads((out / "explain.json").read_text())
    assert [r["rank"] for r in records] == [1, 2, 3] and [r["result"]["id"] for r in records] == [h["id"] for h in hits]
    for r in records:
        assert (out / r["query"]["png"]).stat().st_size > 0 and (out / r["result"]["png"]).stat().st_size > 0
    assert "6 heat-map overlays" in res.stderr
