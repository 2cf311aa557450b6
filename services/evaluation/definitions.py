"""What every reported number means: metric names, definitions and the caveat every report carries.

Kept apart from the report builder and the markdown writer, which both use them.
"""

from __future__ import annotations

LENIENT_KEY = "lenient_map_at_10"
RANKED_KEYS = ("map", "map_at_r", "r_precision")
AT_K_KEYS = ("precision_at_k", "recall_at_k", "hit_at_k")
NAMES = {
    "map": "full mAP",
    "map_at_r": "MAP@R",
    "r_precision": "R-Precision",
    "precision_at_k": "P@{k}",
    "recall_at_k": "Recall@{k}",
    "hit_at_k": "Hit@{k}",
    LENIENT_KEY: "lenient AP@10/hits",
}
CI_BY_RESAMPLE = {
    "patients": "95% percentile bootstrap interval over patients: each resample draws patients with replacement "
    "and takes all of their queries (one patient's images are not independent); per-class and macro resample "
    "the patients within each class, per-source intervals within each (label, source); a query without a "
    "patient id counts as its own patient",
    "queries": "95% percentile bootstrap interval over queries; per-class and macro resample within each class",
}
DEFINITIONS = {
    "relevant": "a gallery image is relevant to a query when their labels are equal (after any --merge); "
    "gallery images of the query's own patient are removed before ranking and never count",
    "map": "full mAP: mean over queries of AP = (1/R) * sum of precision@i over every rank i holding a relevant "
    "image, over the whole ranked gallery; R = relevant gallery images for that query",
    "map_at_r": "MAP@R (Musgrave et al. 2020): (1/R) * sum of precision@i over relevant ranks i <= R",
    "r_precision": "R-Precision: relevant images among the top R, divided by R",
    "precision_at_k": "P@K: relevant images among the top K, divided by K",
    "recall_at_k": "Recall@K (true recall): relevant images among the top K, divided by R; at most K/R",
    "hit_at_k": "Hit@K: 1 if any of the top K is relevant, else 0 (what prior work called recall@K)",
    LENIENT_KEY: "lenient AP@10/hits: sum of precision@i over relevant ranks i <= 10, divided by the number of "
    "relevant images in the top 10 instead of R; for comparison with prior work only, never an mAP",
    "micro": "mean over every scored query of every class, including classes with too few queries for the "
    "macro mean (common classes weigh more)",
    "macro": "mean of the per-class means over the classes with at least N scored queries (every such class "
    "weighs the same); N is stated with the table, the other classes are listed apart",
    "micro_in_macro_classes": "mean over the scored queries of only the classes counted in the macro mean: the "
    "same classes as macro, weighted by queries instead of by class",
    "ci": CI_BY_RESAMPLE["patients"],
    "per_source": "full mAP, MAP@R and P@1 (P@K at the smallest K when 1 is not among the Ks) per (label, source) "
    "of the queries, with their query and patient counts; report.json nests it as per_source[label][source]; "
    "a query's source is its origin_dataset, else its source column",
    "chance": "exact expectation of each metric under a uniformly random ranking of the same gallery with the "
    "query's own patient removed (P@K and R-Precision: prevalence R/N; Recall@K: K/N)",
    "raw_pixels": "cosine on images downsampled to 32x32, flattened and L2-normalised, scored identically",
    "imagenet_lite0": "cosine on frozen ImageNet-1k EfficientNet-Lite0 features (grey repeated to RGB, 224 px, "
    "global average pool of the 1280-d head, L2-normalised), no training: what one would try first",
    "dropped_queries": "queries whose class has no gallery image after exclusion (R = 0) have no AP; dropped",
    "ties": "gallery images with equal cosine are ordered by a hash of (seed, store point id), not by gallery "
    "order (which is sorted by path, and paths often begin with the label)",
    "leak_exact": "a query whose file bytes have the same SHA-256 as a gallery image's",
    "leak_near_duplicate": "a query whose 256-bit difference hash (dHash of the image shrunk to 17x16) is within "
    "the stated number of bits of a gallery image's, and that has no exact copy there; catches re-encoded, "
    "resized and re-windowed copies, not crops",
}
ADULT_AGE_TEXT = "pediatric under 18 years, adult from 18"
# What each shortcut-audit share means; each is shown beside its chance level.
AUDIT_MEANINGS = {
    "same_source": "share of the query's top K from the query's own source (origin dataset); far above chance, "
    "the ranking follows the source",
    "same_label": "share of the top K with the query's own label (P@K over the audited queries)",
    "same_source_other_label": "share of the top K from the query's own source but with another label: images "
    "retrieved for their source, not their disease",
    "other_age_group": f"among the top-K images of known age, the share from the other age group "
    f"({ADULT_AGE_TEXT}); averaged over the queries of known age that have such images in their top K "
    "('with age'); far below chance, the ranking separates children from adults",
    "chance": "each chance_* column is the same share in the whole eligible gallery (the query's own patient "
    "removed), which is what a random ranking gives on average",
}
CAVEAT = (
    "**Label is confounded with source.** In cxr-public, normal and pneumonia images are almost all Kermany "
    "pediatric films from one hospital, while COVID-19 images are adult: figures from papers (often with arrows "
    "or text) and Hannover ICU AP films. A model can score well by recognising the source rather than the "
    "disease (DeGrave et al., Nature Machine Intelligence 2021); see the shortcut audit. Kermany `personN` ids "
    "may merge patients, which makes patient exclusion conservative. Read per-class numbers, and never call a "
    "number here diagnostic."
)
