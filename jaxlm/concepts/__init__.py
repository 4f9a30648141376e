"""Latent hierarchical concept learning (Kong et al., NeurIPS 2024): discrete latent hierarchies, rank
tests on joint probability tables, bottom-up structure learning, metrics and a linear rank baseline; the NNX
bottom-level concept learner (`learner`), the bnlearn networks (`networks`) and the diffusion probes (`probes`).
The learner's names are imported on first use, so `import jaxlm.concepts` does not import jax; `probes` is imported
explicitly. See docs/concepts.md."""

from jaxlm.concepts.baseline import learn_linear_baseline
from jaxlm.concepts.dgp import DiscreteBN, mix_observations
from jaxlm.concepts.errors import ConceptDataError, ConceptGraphError, NotIdentifiable
from jaxlm.concepts.graphs import (LatentDAG, check_conditions, minimal_graph, preset, preset_names,
                                   random_hierarchy)
from jaxlm.concepts.metrics import (adjusted_rand_index, match_latents, matched_accuracy,
                                    normalized_mutual_info, structure_scores)
from jaxlm.concepts.rank import BartlettRank, OracleRank, RobustRank, SVDRank, type1_error
from jaxlm.concepts.networks import NETWORKS, load_network
from jaxlm.concepts.structure import LearnedStructure, learn_from_samples, learn_oracle, learn_structure

_LEARNER = ("ConceptAutoencoder", "ConceptTask", "LearnerConfig", "concept_scores", "encode_concepts",
            "linear_concept_baseline", "train_concept_learner")


def __getattr__(name):
    if name in _LEARNER:
        from jaxlm.concepts import learner
        return getattr(learner, name)
    raise AttributeError(f"module 'jaxlm.concepts' has no attribute {name!r}")


__all__ = [
    "ConceptAutoencoder", "ConceptTask", "LearnerConfig", "NETWORKS", "concept_scores", "encode_concepts",
    "linear_concept_baseline", "load_network", "train_concept_learner",
    "BartlettRank", "ConceptDataError", "ConceptGraphError", "DiscreteBN", "LatentDAG", "LearnedStructure",
    "NotIdentifiable", "OracleRank", "RobustRank", "SVDRank", "adjusted_rand_index", "check_conditions",
    "learn_from_samples", "learn_linear_baseline", "learn_oracle", "learn_structure", "match_latents",
    "matched_accuracy", "minimal_graph", "mix_observations", "normalized_mutual_info", "preset",
    "preset_names", "random_hierarchy", "structure_scores", "type1_error",
]
