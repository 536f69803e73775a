"""``unisem-query``: text queries and closed-set segmentation from a trained semantic run, on every eval view.

Writes, per view, ``<stem>/rgb.png``, ``relevancy_<query>.png`` (turbo), ``composited_<query>.png``,
``mask_<query>.png``, ``segmentation.png`` (colour) and ``segmentation_ids.png`` (uint16 label index + 1),
``instances.png`` / ``instances_color.png`` for methods that predict instances (``predict_instances``; with
scene-level PQ/SQ/RQ against ``gt/instance`` in metrics.json), for a model that is both a semantic and an
instance head (and has a label set) ``panoptic_class.png`` (uint16 class id, 0 = void), ``panoptic_instance.png``
(uint16 instance id, 0 = stuff) and ``panoptic.png`` (colour), with category-aware PQ against ``gt/semantic`` +
``gt/instance`` (Panoptic Lifting's protocol) in metrics.json, and
``metrics.json`` when the scene has ``gt/``: pooled mIoU/mAcc for the label set and, for each query, its IoU with
every GT class pooled over the views where that class is visible (so ``couch`` can be checked against the sofas),
and with ``gt/queries.json`` masks when present.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional

import numpy as np
import torch
import tyro

from unisem_ns.capabilities import InstanceHead, PanopticHead, SemanticHead
from unisem_ns.cues.layout import atomic_save_png, atomic_write_json
from unisem_ns.data.scene_io import InputError, exit_on_input_error, load_gt_queries
from unisem_ns.language.query_field import binary_mask, palette, turbo
from unisem_ns.metrics.scene import SceneEvaluator


@dataclass
class QueryArgs:
    """Render relevancy maps, masks and segmentations of a trained semantic run's eval views."""

    load_config: Path
    """config.yml of a run of a semantic method (unisem-distill, econsg, ...)."""
    output: Path = Path("outputs/query")
    """Folder for the PNGs and metrics.json."""
    queries: str = ""
    """Free-text queries separated by ';', e.g. "couch;lamp"."""
    labels: Optional[Path] = None
    """JSON list of class names for closed-set segmentation; default: the scene's gt/classes.json without void."""
    mask_style: Literal["langsplat", "gsemsplat"] = "langsplat"
    """Relevancy-to-mask post-processing: LangSplat (threshold 0.4) or GSemSplat (0.5)."""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text.strip()) or "query"


def _to_u8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1) * 255).round().byte().cpu().numpy()


def query_file_names(queries: List[str]) -> Dict[str, str]:
    """A file-name stem per query: letters, digits, ``_`` and ``-`` only (so ``/``, ``..`` cannot leave the
    output folder), made unique by a numeric suffix when two queries map to the same stem."""
    names: Dict[str, str] = {}
    used: set = set()
    for q in queries:
        base = name = _safe(q)
        k = 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        names[q] = name
    return names


def parse_queries(text: str) -> List[str]:
    """The ';'-separated queries of ``--queries`` (blank items dropped, repeats once); a value that holds only
    separators or spaces is an error, not a silent "no queries"."""
    queries = list(dict.fromkeys(q.strip() for q in text.split(";") if q.strip()))
    if text.strip() and not queries:
        raise InputError(f"--queries {text!r}: no query text between the ';' separators; give e.g. --queries 'couch;lamp'")
    return queries


def panoptic_maps(model, outputs: Dict[str, torch.Tensor], labels: List[str]):
    """(class ids, instance ids) [H, W] of one view, for a model that is both a SemanticHead and an
    InstanceHead: its own composition when it is a :class:`PanopticHead`; otherwise each pixel's closed-set class
    (over ``labels``, ids in ``model.class_names``) with its instance id + 1 on thing classes and 0 on stuff
    (:data:`unisem_ns.panoptic.DEFAULT_STUFF_CLASSES`)."""
    from unisem_ns.panoptic import compose_panoptic, split_stuff_things, thing_mask

    if isinstance(model, PanopticHead):
        return model.predict_panoptic(outputs)
    names = list(model.class_names)
    ids = torch.as_tensor([names.index(c) for c in labels], dtype=torch.long)
    label_idx = model.query_field.classify(model.language_features(outputs), labels)
    classes = ids.to(label_idx.device)[label_idx.clamp(0, len(labels) - 1)]
    codes = model.predict_instances(outputs)
    _, things = split_stuff_things(names)
    no_votes = torch.zeros(int(codes.max()) + 1, dtype=torch.long)
    return compose_panoptic(classes, codes, no_votes, thing_mask(len(names), things))


def panoptic_things(model) -> List[int]:
    from unisem_ns.panoptic import split_stuff_things

    if isinstance(model, PanopticHead):
        return list(model.thing_class_ids)
    return split_stuff_things(list(model.class_names))[1]


def run_query(args: QueryArgs) -> Dict:
    from unisem_ns.ns.trainer import load_run

    queries = parse_queries(args.queries)  # before loading anything
    _, pipeline, _, _ = load_run(args.load_config, test_mode="test")
    model = pipeline.model
    field = model.query_field if isinstance(model, SemanticHead) else None
    instances = isinstance(model, InstanceHead)
    if field is None and not instances:
        raise InputError(
            f"{args.load_config}: method '{type(model).__name__}' renders no language features; "
            "query a run of a semantic method (e.g. ns-train unisem-distill)"
        )
    if field is None and (queries or args.labels is not None):
        raise InputError(
            f"{args.load_config}: this run's scene had no 2D language cues, so it answers no text queries (instance "
            "maps only); make cues with `unisem-preprocess --data <scene>` and retrain to query it"
        )
    if args.labels is not None:
        try:
            labels: List[str] = json.loads(args.labels.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{args.labels}: cannot read the label list ({e}); pass a JSON list of class names") from None
    else:
        labels = list(model.eval_labels) if isinstance(model, SemanticHead) else []
    if field is not None:
        field.set_queries(queries)
        field.set_labels(labels)

    dataset = pipeline.datamanager.eval_dataset
    file_names = query_file_names(queries)
    class_names: List[str] = list(model.class_names) if isinstance(model, SemanticHead) else []
    score_segmentation = bool(class_names) and labels == model.eval_labels  # label index + 1 = class id
    # Per query: intersection and union with every GT class, pooled over views.
    inter = {q: np.zeros(len(class_names)) for q in queries}
    union = {q: np.zeros(len(class_names)) for q in queries}
    gt_queries = load_gt_queries(Path(dataset.scene_dir)) if getattr(dataset, "scene_dir", None) else {}
    query_gt_iou: Dict[str, List[float]] = {q: [] for q in queries}
    args.output.mkdir(parents=True, exist_ok=True)
    # (class, instance) per pixel: a model with both heads, whose labels are ids of its class names
    both = (instances and field is not None and bool(labels) and bool(class_names)
            and all(c in class_names for c in labels))
    # the scene protocol of ns-eval: every figure pooled over the eval views
    evaluator = SceneEvaluator(num_classes=len(class_names) or None, ignore_index=0,
                               things=panoptic_things(model) if both else None)
    n_views = 0
    for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
        stem = Path(dataset.image_filenames[batch["image_idx"]]).stem
        view_dir = args.output / stem
        view_dir.mkdir(exist_ok=True)
        outputs = model.get_outputs_for_camera(camera)
        atomic_save_png(view_dir / "rgb.png", _to_u8(outputs["rgb"]))
        gt_sem = batch.get("gt_semantic")
        for i, q in enumerate(queries):
            rel = outputs[f"relevancy_{i}"][..., 0]
            mask = binary_mask(rel, style=args.mask_style)
            name = file_names[q]
            atomic_save_png(view_dir / f"relevancy_{name}.png", _to_u8(turbo(rel)))
            atomic_save_png(view_dir / f"composited_{name}.png", _to_u8(outputs[f"composited_{i}"]))
            atomic_save_png(view_dir / f"mask_{name}.png", mask.cpu().numpy().astype(np.uint8) * 255)
            if gt_sem is not None:
                # Like LangSplat's protocol, a class is scored only on the views where it is visible.
                m = mask.cpu().numpy()
                g = gt_sem.cpu().numpy()
                for c in np.unique(g):
                    gc = g == c
                    inter[q][c] += np.logical_and(m, gc).sum()
                    union[q][c] += np.logical_or(m, gc).sum()
            if stem in gt_queries and q in gt_queries[stem]:
                gq = gt_queries[stem][q]
                m = mask.cpu().numpy()
                query_gt_iou[q].append(float(np.logical_and(m, gq).sum() / max(np.logical_or(m, gq).sum(), 1)))
        if instances:
            inst = model.predict_instances(outputs)
            atomic_save_png(view_dir / "instances.png", inst.cpu().numpy().astype(np.uint16))
            atomic_save_png(view_dir / "instances_color.png", _to_u8(palette(int(inst.max()) + 1)[inst.cpu()]))
            if "gt_instance" in batch:
                evaluator.update(pred_instances=inst, gt_instances=batch["gt_instance"].to(inst.device))
        if both:
            pan_cls, pan_inst = panoptic_maps(model, outputs, labels)
            from unisem_ns.panoptic import panoptic_colours

            atomic_save_png(view_dir / "panoptic_class.png", pan_cls.cpu().numpy().astype(np.uint16))
            atomic_save_png(view_dir / "panoptic_instance.png", pan_inst.cpu().numpy().astype(np.uint16))
            colours = panoptic_colours(pan_cls.cpu(), pan_inst.cpu(), len(class_names), int(pan_inst.max()) + 1)
            atomic_save_png(view_dir / "panoptic.png", _to_u8(colours))
            if "gt_instance" in batch and gt_sem is not None:
                evaluator.update(gt_classes=gt_sem.to(pan_cls.device), gt_instances=batch["gt_instance"].to(pan_inst.device),
                                 panoptic_classes=pan_cls, panoptic_instances=pan_inst)
        if labels:
            ids = outputs["segmentation_ids"]
            atomic_save_png(view_dir / "segmentation.png", _to_u8(outputs["segmentation"]))
            atomic_save_png(view_dir / "segmentation_ids.png", (ids.cpu().numpy() + 1).astype(np.uint16))
            if score_segmentation and gt_sem is not None:
                evaluator.update(pred_classes=ids + 1, gt_classes=gt_sem.to(ids.device))
        n_views += 1

    metrics: Dict = {"config": str(args.load_config), "views": n_views, "queries": {}, "labels": labels}
    scene = evaluator.compute()
    if "miou" in scene:
        metrics["segmentation"] = {k: scene[k] for k in ("miou", "macc", "miou_micro", "miou_view_mean", "macc_view_mean")}
    if "pq_scene" in scene:
        metrics["instances"] = {k: scene[k] for k in ("pq_scene", "sq_scene", "rq_scene")}
    if "panoptic_pq" in scene:
        metrics["panoptic"] = {k: scene[f"panoptic_{k}"] for k in ("pq", "sq", "rq", "pq_things", "pq_stuff")}
        metrics["panoptic"]["protocol"] = "panoptic_lifting"
    for q in queries:
        entry: Dict = {}
        if class_names:
            ious = inter[q] / np.maximum(union[q], 1)
            best = int(np.argmax(ious[1:]) + 1) if len(ious) > 1 else 0
            entry["iou_per_class"] = {class_names[c]: float(ious[c]) for c in range(1, len(class_names))}
            entry["best_class"] = class_names[best]
            entry["best_iou"] = float(ious[best])
        if query_gt_iou[q]:
            entry["iou_vs_gt_queries"] = float(np.mean(query_gt_iou[q]))
        metrics["queries"][q] = entry
    atomic_write_json(args.output / "metrics.json", metrics)
    return metrics


def main(argv: Optional[List[str]] = None) -> None:
    args = tyro.cli(QueryArgs, args=argv)
    try:
        metrics = run_query(args)
    except InputError as e:
        raise exit_on_input_error(e) from None
    print(f"unisem-query: wrote {metrics['views']} views to {args.output}")
    if "segmentation" in metrics:
        s = metrics["segmentation"]
        print(f"  closed-set segmentation: mIoU {s['miou']:.3f}  mAcc {s['macc']:.3f}")
    if "instances" in metrics:
        s = metrics["instances"]
        print(f"  instances: PQ^scene {s['pq_scene']:.3f}  SQ {s['sq_scene']:.3f}  RQ {s['rq_scene']:.3f}")
    if "panoptic" in metrics:
        s = metrics["panoptic"]
        print(f"  panoptic: PQ {s['pq']:.3f}  SQ {s['sq']:.3f}  RQ {s['rq']:.3f}  (things {s['pq_things']:.3f}, "
              f"stuff {s['pq_stuff']:.3f})")
    for q, entry in metrics["queries"].items():
        if "best_class" in entry:
            print(f"  '{q}': best matches GT class '{entry['best_class']}' (IoU {entry['best_iou']:.3f})")
    print(f"  metrics: {args.output / 'metrics.json'}")


if __name__ == "__main__":
    main()
