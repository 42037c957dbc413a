"""Linear probes shared by the absorption and k-sparse probing evals.

Features are ``[n, F]`` tensors, dense or sparse COO (SAE latents: an SAE with 65k latents keeps
only the active ones); the helpers here read rows, columns and class means of either kind.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...errors import ThinksaeError


def sparse_latents(latent_acts: Tensor, latent_indices: Tensor, num_latents: int) -> Tensor:
    """Rows of active latents ``[n, width]`` (zero activations are padding) as a sparse COO
    ``[n, num_latents]`` float32 tensor."""
    n, width = latent_acts.shape
    rows = torch.arange(n, device=latent_acts.device).repeat_interleave(width)
    values = latent_acts.reshape(-1).float()
    cols = latent_indices.reshape(-1)
    nonzero = values != 0
    index = torch.stack([rows[nonzero], cols[nonzero]])
    return torch.sparse_coo_tensor(index, values[nonzero], (n, num_latents),
                                   check_invariants=False).coalesce()


def take_rows(features: Tensor, rows: Tensor) -> Tensor:
    """Dense ``features[rows]``."""
    return features.index_select(0, rows).to_dense()


def take_columns(features: Tensor, cols: Tensor, rows: Tensor | None = None) -> Tensor:
    """Dense ``features[rows][:, cols]`` (all rows when None)."""
    part = features if rows is None else features.index_select(0, rows)
    return part.index_select(1, cols).to_dense()


def column_means(features: Tensor, rows: Tensor) -> Tensor:
    """Mean of ``features[rows]`` over rows, dense float64 ``[F]``."""
    part = features.index_select(0, rows)
    total = torch.sparse.sum(part, dim=0).to_dense() if part.is_sparse else part.sum(0)
    return total.double() / max(len(rows), 1)


def mean_difference_top_k(features: Tensor, labels: Tensor, k: int) -> Tensor:
    """The ``k`` features with the largest |mean over positives − mean over negatives| (SAEBench's
    selection for k-sparse probes), largest first; ties go to the lower index."""
    labels = labels.bool()
    rows = torch.arange(len(labels))
    diff = (column_means(features, rows[labels]) - column_means(features, rows[~labels])).abs()
    return torch.argsort(diff, descending=True, stable=True)[:k]


def binary_f1(predicted: Tensor, truth: Tensor) -> float:
    """F1 = 2·TP / (2·TP + FP + FN) of boolean predictions (0 when there is no true positive)."""
    predicted, truth = predicted.bool(), truth.bool()
    tp = int((predicted & truth).sum())
    wrong = int((predicted ^ truth).sum())
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def accuracy(predicted: Tensor, truth: Tensor) -> float:
    """Share of rows where the boolean prediction equals the truth."""
    return float((predicted.bool() == truth.bool()).double().mean())


def check_two_classes(labels: Tensor, what: str) -> None:
    """A probe needs positives and negatives: a one-line error naming ``what`` otherwise."""
    positives = int(labels.bool().sum())
    if positives == 0 or positives == len(labels):
        kind = "no positive" if positives == 0 else "no negative"
        raise ThinksaeError(f"{what} has only one class ({kind} examples among {len(labels)}): "
                            "a probe needs both; give more labelled data or drop that label")


def logistic_regression(x: Tensor, labels: Tensor, c: float = 1.0, max_iter: int = 1000,
                        balanced: bool = False, seed: int = 0):
    """sklearn's L2 logistic regression (regularisation ``c``; ``balanced`` weights classes by
    inverse frequency) fitted on dense ``x`` ``[n, F]``; returns the fitted model."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed,
                               class_weight="balanced" if balanced else None)
    return model.fit(x.double().numpy(), labels.bool().numpy())


def decision_scores(model, x: Tensor) -> Tensor:
    """The fitted model's logit w·x + b per row (positive: predicted positive)."""
    return torch.from_numpy(model.decision_function(x.double().numpy()))


def train_linear_probes(features: Tensor, targets: Tensor, epochs: int = 50, lr: float = 1e-2,
                        end_lr: float = 1e-5, weight_decay: float = 1e-4, l1: float = 0.0,
                        batch_size: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    """One-vs-rest logistic probes trained together, SAEBench's absorption probe recipe: logits
    ``x W^T + b`` ``[n, C]``, loss = BCE-with-logits with each class's positives weighted by
    negatives/positives (1 for a class with no positives) + ``l1`` · mean_c Σ_f |W_cf|; Adam with
    ``weight_decay``, the learning rate decaying exponentially from ``lr`` to ``end_lr`` over
    ``epochs``; shuffled minibatches of ``batch_size`` rows (``features`` dense or sparse,
    densified per minibatch). Returns ``(W [C, F], b [C])``, seeded by ``seed``."""
    targets = targets.float()
    n, num_features = features.shape
    gen = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(num_features)
    weight = ((torch.rand(targets.shape[1], num_features, generator=gen) * 2 - 1) * bound)
    bias = ((torch.rand(targets.shape[1], generator=gen) * 2 - 1) * bound)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    positives = targets.sum(0)
    pos_weight = torch.where(positives > 0, (n - positives) / positives.clamp_min(1), 1.0)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    gamma = math.exp(math.log(end_lr / lr) / epochs)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    with torch.inference_mode(False), torch.enable_grad():  # also when called under inference
        for _ in range(epochs):
            for rows in torch.randperm(n, generator=gen).split(batch_size):
                logits = take_rows(features, rows).float() @ weight.T + bias
                loss = loss_fn(logits, targets[rows])
                if l1:
                    loss = loss + l1 * weight.abs().sum(-1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            scheduler.step()
    return weight.detach(), bias.detach()
