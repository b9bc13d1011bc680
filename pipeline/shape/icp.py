"""Similarity ICP (rotation, translation, isotropic scale) of a point set onto a target surface.

Why similarity: the shape model lives in a normalised frame (unit radius); registering the
patient's femur onto the model's mean shape removes pose and size together, as the research
pipeline did (100 iterations, 1000 landmarks). Each iteration is one KD-tree query for all
landmarks and one closed-form Umeyama solve (an SVD of a 3x3 matrix): no Python loop over points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class Similarity:
    """``y = scale * rotation @ x + translation`` as a 4x4 matrix and its parts."""

    matrix: np.ndarray  # (4, 4)
    rms: float = 0.0
    iterations: int = 0

    @property
    def scale(self) -> float:
        """Isotropic scale factor (positive also for a transform that includes a mirror)."""
        return float(np.cbrt(abs(np.linalg.det(self.matrix[:3, :3]))))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform (N, 3) points."""
        return np.asarray(points, dtype=np.float64) @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def inverse(self) -> Similarity:
        return Similarity(np.linalg.inv(self.matrix), self.rms, self.iterations)

    def then(self, other: Similarity) -> Similarity:
        """``other`` applied after ``self``."""
        return Similarity(other.matrix @ self.matrix, other.rms, self.iterations + other.iterations)


def similarity_matrix(scale: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 matrix of a similarity transform."""
    m = np.eye(4)
    m[:3, :3] = scale * np.asarray(rotation)
    m[:3, 3] = translation
    return m


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity mapping ``src`` onto ``dst`` (paired (N, 3) points), 4x4.

    Umeyama (1991): closed form via the SVD of the cross-covariance; the sign correction keeps
    a proper rotation (no reflection).
    """
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    s = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s[2] = -1.0
    rot = u @ np.diag(s) @ vt
    var_s = (xs ** 2).sum() / len(src)
    scale = float((d * s).sum() / var_s)
    return similarity_matrix(scale, rot, mu_d - scale * rot @ mu_s)


def normalising_similarity(points: np.ndarray) -> Similarity:
    """Centre at the mean and divide by the largest radius ("max_rad", as the model trained)."""
    centre = points.mean(axis=0)
    radius = float(np.linalg.norm(points - centre, axis=1).max())
    return Similarity(similarity_matrix(1.0 / radius, np.eye(3), -centre / radius))


def similarity_icp(source: np.ndarray, target: np.ndarray, *, iterations: int = 100,
                   landmarks: int = 1000, seed: int = 0, tol: float = 1e-9) -> Similarity:
    """Register ``source`` points onto ``target`` points; returns source -> target.

    Starts from centring both sets and matching their max radii; stops early when the RMS
    change falls below ``tol`` (relative). Correspondences run both ways (landmark -> nearest
    target point and target landmark -> nearest moved landmark): the one-way version stalls in
    the near-symmetry of the round condyles (a few degrees about the medial-lateral axis).
    """
    rng = np.random.default_rng(seed)
    target = np.asarray(target, dtype=np.float64)
    lm = np.asarray(source, dtype=np.float64)[
        rng.choice(len(source), size=min(landmarks, len(source)), replace=False)]
    tl = target[rng.choice(len(target), size=min(landmarks, len(target)), replace=False)]
    init = normalising_similarity(np.asarray(source)).then(
        normalising_similarity(target).inverse())
    total = init.matrix
    tree = cKDTree(target)
    prev = np.inf
    rms, it = 0.0, 0
    for it in range(1, iterations + 1):
        moved = lm @ total[:3, :3].T + total[:3, 3]
        dist, nn = tree.query(moved, workers=-1)
        back, nn_back = cKDTree(moved).query(tl, workers=-1)
        rms = float(np.sqrt((np.sum(dist ** 2) + np.sum(back ** 2)) / (len(dist) + len(back))))
        step = umeyama(np.concatenate([moved, moved[nn_back]]), np.concatenate([target[nn], tl]))
        total = step @ total
        if abs(prev - rms) <= tol * max(rms, 1e-12):
            break
        prev = rms
    return Similarity(total, rms, it)
