"""Procedurally generated lesion-like images for tests, examples and quick experiments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.utils import Bunch, check_random_state


@dataclass(frozen=True)
class _Archetype:
    """What makes a synthetic class: shape, colour, border and texture."""

    centre: tuple[float, float, float]  # RGB at the lesion centre
    edge: tuple[float, float, float]  # RGB at its border
    eccentricity: float  # 0 = round
    n_lobes: int
    lobe_amp: float
    irregularity: float  # amplitude of high-frequency border wobble
    fuzziness: float  # width of the border transition
    radius: float  # mean radius, in half-image units
    dots: int  # number of dark dots / globules
    dot_color: tuple[float, float, float]
    streaks: float  # strength of radial streaks
    network: float  # strength of a reticular pattern
    pale_centre: float  # strength of a pale central patch


# Seven archetypes loosely modelled on the HAM10000 diagnoses, in their sorted order.
# fmt: off
_ARCHETYPES = (
    # akiec-like: pink-red, scaly, fuzzy border
    _Archetype((196, 118, 108), (206, 140, 124), 0.30, 0, 0.0, 0.06, 0.16, 0.45, 0,
               (0, 0, 0), 0.0, 0.35, 0.0),
    # bcc-like: pinkish, blue-grey globules, red streaks
    _Archetype((200, 140, 142), (212, 160, 152), 0.15, 0, 0.0, 0.05, 0.08, 0.42, 9,
               (95, 100, 120), 0.45, 0.0, 0.0),
    # bkl-like: tan, sharp border, elongated, cerebriform network
    _Archetype((160, 116, 82), (182, 138, 100), 0.45, 0, 0.0, 0.04, 0.03, 0.48, 0,
               (0, 0, 0), 0.0, 0.8, 0.0),
    # df-like: small, light-brown ring around a pale centre
    _Archetype((205, 170, 150), (150, 105, 78), 0.10, 0, 0.0, 0.03, 0.07, 0.32, 0,
               (0, 0, 0), 0.0, 0.0, 0.9),
    # mel-like: dark, asymmetric, lobed, irregular border, dots
    _Archetype((62, 40, 36), (118, 80, 62), 0.30, 3, 0.16, 0.16, 0.05, 0.52, 14,
               (30, 30, 45), 0.25, 0.0, 0.0),
    # nv-like: round, uniform medium brown, smooth
    _Archetype((128, 86, 60), (146, 102, 74), 0.08, 0, 0.0, 0.02, 0.04, 0.40, 0,
               (0, 0, 0), 0.0, 0.15, 0.0),
    # vasc-like: red-purple lobules
    _Archetype((150, 42, 72), (172, 66, 94), 0.20, 4, 0.12, 0.04, 0.05, 0.38, 6,
               (110, 20, 50), 0.0, 0.0, 0.0),
)
# fmt: on


def _archetype(k: int) -> _Archetype:
    """The fixed recipe of class ``k``; the same for every ``random_state``."""
    if k < len(_ARCHETYPES):
        return _ARCHETYPES[k]
    rng = np.random.default_rng([7919, k])
    centre = rng.uniform(40, 210, size=3)
    return _Archetype(
        centre=tuple(centre),
        edge=tuple(np.clip(centre + rng.uniform(0, 40, size=3), 0, 255)),
        eccentricity=float(rng.uniform(0, 0.5)),
        n_lobes=int(rng.choice([0, 3, 4, 5])),
        lobe_amp=float(rng.uniform(0, 0.18)),
        irregularity=float(rng.uniform(0.02, 0.16)),
        fuzziness=float(rng.uniform(0.03, 0.15)),
        radius=float(rng.uniform(0.32, 0.52)),
        dots=int(rng.integers(0, 14)),
        dot_color=tuple(rng.uniform(20, 120, size=3)),
        streaks=float(rng.uniform(0, 0.5)),
        network=float(rng.uniform(0, 0.8)),
        pale_centre=float(rng.choice([0.0, 0.0, 0.8])),
    )


def _render(a: _Archetype, res: int, rng: np.random.Generator) -> np.ndarray:
    """One float RGB image (res, res, 3) in [0, 255] of archetype ``a`` with random nuisances."""
    lin = (np.arange(res) + 0.5) / res * 2 - 1
    y, x = np.meshgrid(lin, lin, indexing="ij")
    # background: skin tone, illumination gradient, dermoscope vignette
    skin = np.array([226.0, 184.0, 156.0]) * rng.uniform(0.82, 1.08) + rng.normal(0, 5, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.12) * (x * np.cos(angle) + y * np.sin(angle))
    vignette = 1 - rng.uniform(0, 0.25) * np.clip(x**2 + y**2 - 0.8, 0, None)
    img = skin * (light * vignette)[..., None]
    # shape: shifted, scaled, rotated ellipse with lobes and an irregular border
    cx, cy = rng.uniform(-0.18, 0.18, size=2)
    rot = rng.uniform(0, 2 * np.pi)
    u = (x - cx) * np.cos(rot) + (y - cy) * np.sin(rot)
    v = -(x - cx) * np.sin(rot) + (y - cy) * np.cos(rot)
    ecc = float(np.clip(a.eccentricity + rng.normal(0, 0.08), 0, 0.7))
    u, v = u / (1 + ecc), v * (1 + ecc)
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    radius = a.radius * rng.uniform(0.78, 1.22)
    boundary = 1 + a.lobe_amp * rng.uniform(0.5, 1.5) * np.cos(
        a.n_lobes * theta + rng.uniform(0, 6.3)
    )
    irr = a.irregularity * rng.uniform(0.6, 1.4)
    for j in range(5, 11):
        boundary += irr * rng.normal(0, 1) / np.sqrt(j) * np.cos(j * theta + rng.uniform(0, 6.3))
    r_b = radius * np.clip(boundary, 0.4, None)
    fuzz = a.fuzziness * rng.uniform(0.7, 1.3)
    mask = np.clip(0.5 - (rho - r_b) / fuzz, 0, 1)
    t = np.clip(rho / r_b, 0, 1)
    # colour: centre-to-edge gradient, per-image colour and brightness jitter
    jitter = rng.normal(0, 7, size=3) + rng.normal(0, 10)
    bright = rng.uniform(0.88, 1.12)
    centre = (np.array(a.centre) + jitter) * bright
    edge = (np.array(a.edge) + jitter) * bright
    col = centre + (edge - centre) * (t**1.5)[..., None]
    # textures
    if a.network > 0:
        freq = rng.uniform(14, 20)
        net = np.cos(freq * u + rng.uniform(0, 6.3)) * np.cos(freq * v + rng.uniform(0, 6.3))
        col = col * (1 - 0.22 * a.network * (net > 0.2))[..., None]
    if a.streaks > 0:
        m = rng.integers(9, 15)
        streak = np.clip(np.cos(m * theta + 2 * np.sin(3 * theta)), 0, 1) ** 4 * t
        col = col * (1 - a.streaks * 0.5 * streak)[..., None]
    if a.pale_centre > 0:
        pale = np.clip(1 - t / 0.45, 0, 1) * a.pale_centre
        col = col + (np.array([236.0, 214.0, 200.0]) - col) * pale[..., None]
    for _ in range(rng.poisson(a.dots) if a.dots else 0):
        r_dot, a_dot = radius * np.sqrt(rng.uniform(0, 0.8)), rng.uniform(0, 2 * np.pi)
        du, dv = u - r_dot * np.cos(a_dot), v - r_dot * np.sin(a_dot)
        blob = np.exp(-(du**2 + dv**2) / (2 * (rng.uniform(0.02, 0.04) ** 2)))
        col = col + (np.array(a.dot_color) - col) * (0.8 * blob)[..., None]
    opacity = rng.uniform(0.8, 1.0)
    img = img + (col - img) * (opacity * mask)[..., None]
    # nuisances: hairs and sensor noise
    for _ in range(rng.poisson(0.6)):
        p = rng.uniform(-1, 1, size=2)
        phi = rng.uniform(0, np.pi)
        dist = np.abs((x - p[0]) * np.sin(phi) - (y - p[1]) * np.cos(phi))
        hair = np.clip(1 - dist / rng.uniform(0.01, 0.025), 0, 1)
        img = img + (np.array([45.0, 30.0, 25.0]) - img) * (0.8 * hair)[..., None]
    img = img + rng.normal(0, 6, size=img.shape)
    return img


def _generator(random_state) -> np.random.Generator:
    """A Generator from ``random_state``, never touching the global NumPy RNG."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None:
        return np.random.default_rng()
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return np.random.default_rng(int(random_state))
    rs = check_random_state(random_state)  # a RandomState instance; validates anything else
    return np.random.default_rng(rs.randint(0, 2**31 - 1))


def make_synthetic_lesions(
    n_classes: int = 7,
    n_per_class: int = 50,
    *,
    size: int = 28,
    random_state: int | np.random.RandomState | np.random.Generator | None = None,
    class_sizes: Sequence[int] | None = None,
) -> Bunch:
    """Generate lesion-like RGB images: a learnable, non-trivial toy data set.

    Each class has a fixed recipe (the same for every ``random_state``):
    ellipse eccentricity and lobes, border irregularity and sharpness, a
    centre-to-edge colour gradient, and a texture (dots/globules, radial
    streaks, a reticular network, a pale centre). The first seven recipes
    loosely imitate the HAM10000 diagnoses in sorted order (akiec, bcc, bkl,
    df, mel, nv, vasc); further classes get random recipes. Every image adds
    random position, scale, rotation, colour and brightness jitter, skin tone,
    illumination, hairs and pixel noise, so classes overlap somewhat. Images
    are rendered at twice ``size`` and averaged down (antialiased).

    These are NOT real medical images: use them to test code and pipelines,
    never to draw medical conclusions.

    Parameters
    ----------
    n_classes : int, default=7
        Number of classes.
    n_per_class : int, default=50
        Images per class (ignored when ``class_sizes`` is given).
    size : int, default=28
        Height and width of the images.
    random_state : int, RandomState, Generator or None, default=None
        Seed of the per-image randomness and of the final shuffle; the same
        seed gives identical arrays. The global NumPy RNG is never used.
    class_sizes : sequence of int, default=None
        Images per class, of length ``n_classes``: makes a long-tailed set,
        e.g. ``[300, 100, 30, 10]``.

    Returns
    -------
    data : sklearn.utils.Bunch
        A dictionary-like object with the keys:

        images : ndarray of shape (n_samples, size, size, 3), dtype uint8

        target : ndarray of shape (n_samples,), dtype int64
            Shuffled.

        target_names : ndarray of str
            ``"synthetic_0"``, ``"synthetic_1"``, ...

        groups : ndarray of shape (n_samples,), dtype int64
            One group per image (each image is its own "lesion").

        DESCR : str
            Starts with "SYNTHETIC".

    Examples
    --------
    >>> from fewmed.datasets import make_synthetic_lesions
    >>> data = make_synthetic_lesions(n_classes=3, class_sizes=[20, 5, 2], random_state=0)
    >>> data.images.shape, data.images.dtype
    ((27, 28, 28, 3), dtype('uint8'))
    >>> import numpy as np
    >>> np.bincount(data.target).tolist()
    [20, 5, 2]
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 4:
        raise ValueError(f"size must be an int >= 4, got {size!r}")
    if class_sizes is None:
        if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)):
            raise ValueError(f"n_per_class must be a non-negative int, got {n_per_class!r}")
        counts = [int(n_per_class)] * int(n_classes)
    else:
        counts = [int(c) for c in class_sizes]
        if len(counts) != n_classes:
            raise ValueError(
                f"class_sizes has {len(counts)} entries but n_classes={n_classes}; pass "
                f"n_classes={len(counts)}"
            )
    if min(counts) < 0:
        raise ValueError(f"class sizes must be >= 0, got {counts}")
    rng = _generator(random_state)
    res = 2 * int(size)
    n = sum(counts)
    target = np.repeat(np.arange(n_classes, dtype=np.int64), counts)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, k in enumerate(target):
        img = _render(_archetype(int(k)), res, rng)
        img = img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
        images[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    order = rng.permutation(n)
    images, target = images[order], target[order]
    names = np.asarray([f"synthetic_{k}" for k in range(n_classes)], dtype=str)
    lines = [
        "SYNTHETIC lesion-like images generated by fewmed.datasets.make_synthetic_lesions.",
        "They are NOT real medical images: for tests, examples and pipeline checks only.",
        "",
        f"images: {n} of {size}x{size}x3; classes: {n_classes}; per class: {counts}",
        "Classes differ by shape (eccentricity, lobes), border (irregularity, sharpness),",
        "colour and texture (dots, streaks, network, pale centre); each image adds random",
        "position, scale, rotation, colour, illumination, hairs and noise.",
    ]
    return Bunch(
        images=images,
        target=target,
        target_names=names,
        groups=np.arange(n, dtype=np.int64),
        DESCR="\n".join(lines),
    )
