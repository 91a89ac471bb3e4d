"""Statistics for emotion-representation analyses: RSA, permutation and bootstrap inference,
effect sizes, label separation, Procrustes alignment, manifold distances, clustering, PCA
correlations, quadratic depth profiles and pairwise-preference models.

All functions are pure: numpy in, numpy (or small frozen dataclasses) out. The code lives in one
module per topic (`inference`, `similarity`, `conditions`, `separation`, `geometry`, `depth`, `preferences`; shared
input checks in `_common`); every public name is re-exported here, so `from emonn import stats` and
`stats.rsa_test(...)` is the way to use them.
"""

from ._common import Alternative, Method
from .conditions import (
    ConditionTest, NoiseCorrected, condition_bootstrap, condition_test, disattenuate, grid_summaries, noise_corrected,
    reliability, rsa_grid_samples, rsa_samples, spearman_brown,
    split_halves,
)
from .depth import Peak, QuadraticFit, peak, quadratic_vertex
from .geometry import (
    ClusterAgreement, adjusted_rand, cluster_agreement, euclidean_distances, geodesic_distances, hierarchical_order,
    kmeans_labels, pc_correlations,
    pc_scores, procrustes_test,
)
from .inference import (
    BootstrapResult, Corrected, EffectSize, PermutationResult, RankTest, bootstrap_ci, cohens_d, correct,
    mann_whitney, paired_permutation_test, permutation_p, resample_counts, wilcoxon,
)
from .preferences import bradley_terry, bradley_terry_batch, elo, elo_batch
from .separation import (
    LayerTest, Separation, SeparationScores, between_within_ratio, direction_test, mean_pairwise_cosine,
    nearest_centroid_accuracy, separation_permutation_test, separation_scores, silhouette, transfer_accuracy,
)
from .similarity import (
    GridTest, class_mean_cosines, cosine_matrix, rsa, rsa_grid, rsa_grid_test, rsa_stack, rsa_test, rsa_vectors,
    upper,
)

__all__ = [
    # types
    "Alternative", "Method",
    # inference
    "PermutationResult", "BootstrapResult", "EffectSize", "RankTest", "Corrected", "permutation_p", "bootstrap_ci",
    "cohens_d", "mann_whitney", "wilcoxon", "correct", "paired_permutation_test", "resample_counts",
    # similarity (RSA)
    "cosine_matrix", "upper", "rsa", "rsa_stack", "rsa_test", "class_mean_cosines", "rsa_vectors", "rsa_grid",
    "GridTest", "rsa_grid_test",
    # conditions (emotions as the unit)
    "rsa_samples", "rsa_grid_samples", "split_halves", "condition_bootstrap", "reliability", "disattenuate",
    "grid_summaries", "ConditionTest", "condition_test", "spearman_brown", "NoiseCorrected", "noise_corrected",
    # separation
    "Separation", "between_within_ratio", "transfer_accuracy", "nearest_centroid_accuracy", "silhouette",
    "SeparationScores", "LayerTest", "mean_pairwise_cosine", "separation_scores", "separation_permutation_test",
    "direction_test",
    # geometry
    "procrustes_test", "ClusterAgreement", "cluster_agreement", "euclidean_distances", "geodesic_distances",
    "kmeans_labels", "adjusted_rand",
    "hierarchical_order", "pc_scores", "pc_correlations",
    # depth
    "QuadraticFit", "quadratic_vertex", "Peak", "peak",
    # preferences
    "bradley_terry", "elo", "bradley_terry_batch", "elo_batch",
]
