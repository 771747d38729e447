"""Plain float64 references for the losses: loops over samples, written from the papers.

They use ordinary differentiable torch scalar ops so autograd gives reference gradients too;
none of them shares code with `losses/`.
"""

from __future__ import annotations

import math

import torch


def softmax_loss(x, weight, bias, labels):
    terms = []
    for i in range(x.shape[0]):
        logits = [
            x[i] @ weight[j] + (bias[j] if bias is not None else 0.0)
            for j in range(weight.shape[0])
        ]
        top = max(float(v.detach()) for v in logits)
        log_norm = top + torch.log(sum(torch.exp(v - top) for v in logits))
        terms.append(log_norm - logits[int(labels[i])])
    return sum(terms) / len(terms)


def sphereface_psi_by_angle(theta, m):
    """ψ(θ) from the angle itself (acos side of the definition)."""
    k = math.floor(float(theta.detach()) * m / math.pi)
    k = min(k, m - 1)
    return (-1) ** k * torch.cos(m * theta) - 2 * k


def asoftmax_loss(x, weight, labels, m, lam):
    terms = []
    for i in range(x.shape[0]):
        norm = torch.sqrt((x[i] ** 2).sum())
        logits = []
        for j in range(weight.shape[0]):
            w = weight[j] / torch.sqrt((weight[j] ** 2).sum())
            cos = (x[i] @ w) / norm
            if j == int(labels[i]):
                theta = torch.acos(cos)
                logits.append(norm * (lam * cos + sphereface_psi_by_angle(theta, m)) / (1 + lam))
            else:
                logits.append(norm * cos)
        top = max(float(v.detach()) for v in logits)
        log_norm = top + torch.log(sum(torch.exp(v - top) for v in logits))
        terms.append(log_norm - logits[int(labels[i])])
    return sum(terms) / len(terms)


def center_loss(x, centers, labels):
    total = sum(((x[i] - centers[int(labels[i])]) ** 2).sum() for i in range(x.shape[0]))
    return total / (2 * x.shape[0])


def center_update(x, centers, labels, alpha):
    new = centers.clone()
    for j in range(centers.shape[0]):
        members = [i for i in range(x.shape[0]) if int(labels[i]) == j]
        delta = sum((centers[j] - x[i] for i in members), torch.zeros_like(centers[j]))
        new[j] = centers[j] - alpha * delta / (1 + len(members))
    return new


def _prepared(x, normalize):
    if normalize:
        x = torch.stack([row / torch.sqrt((row**2).sum()) for row in x])
    n = x.shape[0]
    d = [[((x[a] - x[b]) ** 2).sum() for b in range(n)] for a in range(n)]
    return x, d


def triplet_loss(x, labels, margin, mining, normalize=True):
    """Returns (loss, chosen) with chosen the selected negatives (for the hand-built tests)."""
    x, d = _prepared(x, normalize)
    labels = [int(v) for v in labels]
    n = len(labels)
    terms, chosen = [], {}
    for a in range(n):
        positives = [p for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [q for q in range(n) if labels[q] != labels[a]]
        if not positives or not negatives:
            continue
        if mining == "semihard":
            for p in positives:
                farther = [
                    q for q in negatives if float(d[a][q].detach()) > float(d[a][p].detach())
                ]
                if farther:
                    q = min(farther, key=lambda q: float(d[a][q].detach()))
                else:
                    q = max(negatives, key=lambda q: float(d[a][q].detach()))
                chosen[(a, p)] = q
                terms.append(torch.relu(d[a][p] - d[a][q] + margin))
        elif mining == "hard":
            p = max(positives, key=lambda p: float(d[a][p].detach()))
            q = min(negatives, key=lambda q: float(d[a][q].detach()))
            chosen[a] = (p, q)
            terms.append(torch.relu(d[a][p] - d[a][q] + margin))
        else:
            for p in positives:
                for q in negatives:
                    value = d[a][p] - d[a][q] + margin
                    if float(value.detach()) > 0:
                        terms.append(value)
    if not terms:
        return x.sum() * 0.0, chosen
    return sum(terms) / len(terms), chosen


def combined_margin_loss(x, weight, labels, m1, m2, m3, scale):
    """insightface's combined margin from the angle: s·(cos(m1·θ + m2) − m3) for the target,
    s·cos θ_j otherwise; past m1·θ + m2 > π, arcface_torch's fallback s·(cos θ − m2 sin m2 − m3)."""
    terms = []
    for i in range(x.shape[0]):
        u = x[i] / torch.sqrt((x[i] ** 2).sum())
        logits = []
        for j in range(weight.shape[0]):
            w = weight[j] / torch.sqrt((weight[j] ** 2).sum())
            cos = u @ w
            if j == int(labels[i]):
                theta = torch.acos(cos)
                if m1 * float(theta.detach()) + m2 < math.pi:
                    logits.append(scale * (torch.cos(m1 * theta + m2) - m3))
                else:
                    logits.append(scale * (cos - m2 * math.sin(m2) - m3))
            else:
                logits.append(scale * cos)
        top = max(float(v.detach()) for v in logits)
        log_norm = top + torch.log(sum(torch.exp(v - top) for v in logits))
        terms.append(log_norm - logits[int(labels[i])])
    return sum(terms) / len(terms)
