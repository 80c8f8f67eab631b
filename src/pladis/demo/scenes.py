"""Procedural scenes with exact captions: the demo model's training data and the benchmark's prompts.

Every scene is drawn by a vectorised torch rasteriser (runs on CPU or GPU), from a seeded
``torch.Generator``, so a batch is a pure function of (seed, batch size, device).

Caption grammar (word-level, lower case; ``[size]`` is an optional ``big`` or ``small``)::

    single      a [size] red circle
    position    a [size] red circle at the top|bottom|left|right
    relation    a [size] red circle left of|right of|above|below a [size] blue square
    and         a red circle and a blue square [and a green triangle]
    count       two|three|four red circles

Images are ``size x size`` (default 32) RGB in [0, 1] on a black background; 1 to 4 objects.

**Held-out compositions.** Some compositions never occur in training (:func:`sample_layout` with
``split="train"``), so the benchmark can score seen and unseen ones separately:

* :data:`HELDOUT_PAIRS`: six colour-shape pairs (each colour loses one shape, each shape two colours);
  a training scene never *draws* such an object, in any caption kind.
* :data:`HELDOUT_ARRANGEMENTS`: colour pairs that are never drawn side by side on one axis in training
  (``(a, "h", b)``: ``a`` left of ``b``, said as "a left of b" or "b right of a"; ``"v"``: ``a`` above ``b``).
  A training scene never shows such an arrangement of two objects, said or not.

``split="heldout"`` keeps only scenes with at least one held-out composition; ``"seen"`` (= ``"train"``) none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.12, 0.78, 0.15),
    "blue": (0.15, 0.28, 0.95),
    "yellow": (0.95, 0.88, 0.10),
    "purple": (0.80, 0.15, 0.85),
    "cyan": (0.10, 0.85, 0.88),
}
COLOR_NAMES = list(COLORS)
SHAPES = ["circle", "square", "triangle"]
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
POSITIONS = ["top", "bottom", "left", "right"]
RELATIONS = ["left of", "right of", "above", "below"]
SIZES = ["small", "big"]
NUMBERS = {2: "two", 3: "three", 4: "four"}
KINDS = ["single", "position", "relation", "and", "count"]
KIND_PROBS = [0.10, 0.20, 0.40, 0.15, 0.15]
MAX_OBJECTS = 4
P_SIZE_SAID = 0.5  # how often a single/position/relation object's size is said

# never drawn in training: one shape per colour, two colours per shape (a Latin square)
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "triangle"),
        ("green", "square"),
        ("blue", "circle"),
        ("yellow", "square"),
        ("purple", "circle"),
        ("cyan", "triangle"),
    }
)
# (first, axis, second): `first` left of (axis "h") or above (axis "v") `second`; never drawn so in training
HELDOUT_ARRANGEMENTS: frozenset[tuple[str, str, str]] = frozenset(
    (a, axis, b)
    for ia, a in enumerate(COLOR_NAMES)
    for ib, b in enumerate(COLOR_NAMES)
    for ax_i, axis in enumerate(("h", "v"))
    if ia != ib and (ia + 2 * ib + ax_i) % 5 == 0
)
SPLITS = ("seen", "heldout", "validation")

# Every word the grammar can produce, in tokenizer order: the words of pladis <= 0.2 first (their ids are kept),
# then the words added with sizes and four objects.
_LEGACY_WORDS = sorted(
    set(COLOR_NAMES)
    | set(SHAPES)
    | set(PLURAL.values())
    | {"a", "at", "the", "and", "of", "left", "right", "above", "below", "top", "bottom", "two", "three"}
)
WORDS = [*_LEGACY_WORDS, "big", "small", "four"]


@dataclass
class Spec:
    """What a caption asks for, in checkable form."""

    kind: str
    objects: list[tuple[str, str]] = field(default_factory=list)  # (colour, shape), in caption order
    position: str | None = None  # for kind == "position"
    relation: str | None = None  # for kind == "relation": objects[0] <relation> objects[1]
    count: int | None = None  # for kind == "count"
    sizes: list[str | None] = field(default_factory=list)  # said sizes per object; [] when none is said

    def size_of(self, i: int) -> str | None:
        return self.sizes[i] if i < len(self.sizes) else None

    def _np(self, i: int) -> str:
        c, s = self.objects[i]
        sz = self.size_of(i)
        return f"a {sz} {c} {s}" if sz else f"a {c} {s}"

    def caption(self) -> str:
        if self.kind == "count":
            c, s = self.objects[0]
            assert self.count is not None
            return f"{NUMBERS[self.count]} {c} {PLURAL[s]}"
        if self.kind == "single":
            return self._np(0)
        if self.kind == "position":
            return f"{self._np(0)} at the {self.position}"
        if self.kind == "relation":
            return f"{self._np(0)} {self.relation} {self._np(1)}"
        return " and ".join(self._np(i) for i in range(len(self.objects)))

    def compositions(self) -> tuple[set[tuple[str, str]], set[tuple[str, str, str]]]:
        """The colour-shape pairs and the (first, axis, second) arrangements this caption asks for."""
        pairs = set(self.objects)
        arr: set[tuple[str, str, str]] = set()
        if self.kind == "relation" and self.relation:
            (a, _), (b, _) = self.objects[0], self.objects[1]
            arr.add(
                {"left of": (a, "h", b), "right of": (b, "h", a), "above": (a, "v", b), "below": (b, "v", a)}[
                    self.relation
                ]
            )
        return pairs, arr

    def is_heldout(self) -> bool:
        """True when the caption asks for a composition that training never shows."""
        pairs, arr = self.compositions()
        return bool(pairs & HELDOUT_PAIRS) or bool(arr & HELDOUT_ARRANGEMENTS)


def _parse_np(w: list[str]) -> tuple[tuple[str, str], str | None, list[str]] | None:
    """``a [size] colour shape`` at the start of ``w``: ((colour, shape), size, rest) or None."""
    if len(w) < 3 or w[0] not in ("a", "an"):
        return None
    size = None
    if w[1] in SIZES:
        size, w = w[1], w[1:]
        if len(w) < 3:
            return None
    if w[1] not in COLORS or w[2] not in SHAPES:
        return None
    return (w[1], w[2]), size, w[3:]


def _sizes(sizes: list[str | None]) -> list[str | None]:
    return sizes if any(s is not None for s in sizes) else []


def parse_caption(text: str) -> Spec | None:
    """Parse a caption of the grammar above; ``None`` if it is not one."""
    w = text.lower().replace(",", " ").replace(".", " ").split()
    plural_inv = {v: k for k, v in PLURAL.items()}
    num_inv = {v: k for k, v in NUMBERS.items()}
    if len(w) == 3 and w[0] in num_inv and w[1] in COLORS and w[2] in plural_inv:
        return Spec("count", [(w[1], plural_inv[w[2]])], count=num_inv[w[0]])
    first = _parse_np(w)
    if first is None:
        return None
    obj, size, rest = first
    if not rest:
        return Spec("single", [obj], sizes=_sizes([size]))
    if rest[:2] == ["at", "the"] and len(rest) == 3 and rest[2] in POSITIONS:
        return Spec("position", [obj], position=rest[2], sizes=_sizes([size]))
    for rel in RELATIONS:
        rw = rel.split()
        if rest[: len(rw)] == rw:
            second = _parse_np(rest[len(rw) :])
            if second is None or second[2]:
                return None
            return Spec("relation", [obj, second[0]], relation=rel, sizes=_sizes([size, second[1]]))
    if rest[:1] == ["and"] and size is None:
        objs = [obj]
        while rest[:1] == ["and"]:
            nxt = _parse_np(rest[1:])
            if nxt is None or nxt[1] is not None:
                return None
            objs.append(nxt[0])
            rest = nxt[2]
        if rest or len(objs) > 3 or len({c for c, _ in objs}) != len(objs):
            return None
        return Spec("and", objs)
    return None


@dataclass
class SceneBatch:
    images: torch.Tensor  # (n, 3, size, size) in [0, 1]
    captions: list[str]
    specs: list[Spec]
    # per-object ground truth, (n, MAX_OBJECTS) each; objects not present have present == False
    present: torch.Tensor
    color: torch.Tensor
    shape: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    radius: torch.Tensor


def _u(gen, shape, lo, hi, device):
    return lo + (hi - lo) * torch.rand(shape, generator=gen, device=device)


def _draw_layout(n: int, gen: torch.Generator, size: int, dev: torch.device, kinds: list[str] | None) -> dict:
    """n layouts of any composition (the split is applied by :func:`sample_layout`)."""
    s = float(size)
    k = MAX_OBJECTS
    if kinds is None:
        kind = torch.multinomial(torch.tensor(KIND_PROBS, device=dev), n, replacement=True, generator=gen)
    else:
        allowed = torch.tensor([KINDS.index(x) for x in kinds], device=dev)
        kind = allowed[torch.randint(0, len(allowed), (n,), generator=gen, device=dev)]
    nc = len(COLOR_NAMES)
    # distinct colours for the objects of one scene (counts repaint them with the first below)
    col = torch.argsort(torch.rand(n, nc, generator=gen, device=dev), dim=1)[:, :k]
    shp = torch.randint(0, len(SHAPES), (n, k), generator=gen, device=dev)
    sub = torch.randint(0, 4, (n,), generator=gen, device=dev)  # position / relation index
    cnt = torch.randint(2, 5, (n,), generator=gen, device=dev)  # objects of a count scene: 2..4
    n_and = torch.randint(2, 4, (n,), generator=gen, device=dev)  # objects of an "and" scene: 2..3
    big = torch.rand(n, k, generator=gen, device=dev) < 0.5
    said = torch.rand(n, k, generator=gen, device=dev) < P_SIZE_SAID
    sc = s / 32.0

    # --- single objects: small r in [3.2, 4], big in [6, 7.5] ---
    r_single = torch.where(big[:, 0], _u(gen, (n,), 6.0 * sc, 7.5 * sc, dev), _u(gen, (n,), 3.2 * sc, 4.0 * sc, dev))
    x_any = r_single + _u(gen, (n,), 0, 1, dev) * (s - 2 * r_single)
    y_any = r_single + _u(gen, (n,), 0, 1, dev) * (s - 2 * r_single)
    # --- single objects at a position: primary coordinate in the outer 30 %, the other central ---
    edge = r_single + _u(gen, (n,), 0, 1, dev) * (0.3 * s - r_single).clamp(min=0)
    mid = _u(gen, (n,), 0.3 * s, 0.7 * s, dev)
    far = s - edge
    px = torch.where(sub == 2, edge, torch.where(sub == 3, far, mid))  # left / right
    py = torch.where(sub == 0, edge, torch.where(sub == 1, far, mid))  # top / bottom
    px = torch.where(sub >= 2, px, mid)
    py = torch.where(sub < 2, py, _u(gen, (n,), 0.3 * s, 0.7 * s, dev))

    # --- pairs: small r in [3.2, 4], big in [5.5, 6.5]; separation d on the relation's axis ---
    def pair_r(j):
        return torch.where(big[:, j], _u(gen, (n,), 5.5 * sc, 6.5 * sc, dev), _u(gen, (n,), 3.2 * sc, 4.0 * sc, dev))

    ra, rb = pair_r(0), pair_r(1)
    dmin = ra + rb + 2 * sc
    dmax = s - ra - rb
    d = dmin + _u(gen, (n,), 0, 1, dev) * (dmax - dmin)
    # an "and" pair is laid out by a random relation too (sub); it just is not said
    a_low = (sub == 0) | (sub == 2)  # "left of" / "above": the first object has the lower coordinate
    r_low = torch.where(a_low, ra, rb)
    r_high = torch.where(a_low, rb, ra)
    lo = r_low + _u(gen, (n,), 0, 1, dev) * (s - r_high - d - r_low).clamp(min=0)
    hi = lo + d
    prim_a = torch.where(a_low, lo, hi)
    prim_b = torch.where(a_low, hi, lo)
    sec_a = ra + _u(gen, (n,), 0, 1, dev) * (s - 2 * ra)
    sec_b = torch.minimum(torch.maximum(sec_a + _u(gen, (n,), -0.5, 0.5, dev) * d, rb), s - rb)
    horiz = sub < 2  # left of / right of
    pax = torch.where(horiz, prim_a, sec_a)
    pay = torch.where(horiz, sec_a, prim_a)
    pbx = torch.where(horiz, prim_b, sec_b)
    pby = torch.where(horiz, sec_b, prim_b)

    # --- counts and three-object "and": distinct cells of a 3x3 grid, jittered ---
    cell = s / 3.0
    rc = _u(gen, (n, k), 3.2 * sc, 4.2 * sc, dev)
    cells = torch.argsort(torch.rand(n, 9, generator=gen, device=dev), dim=1)[:, :k]
    jit = (cell / 2 - rc - 0.7 * sc).clamp(min=0)
    ccx = (cells % 3).float() * cell + cell / 2 + _u(gen, (n, k), -1, 1, dev) * jit
    ccy = (cells // 3).float() * cell + cell / 2 + _u(gen, (n, k), -1, 1, dev) * jit

    K = {name: i for i, name in enumerate(KINDS)}
    is_single = kind == K["single"]
    is_pos = kind == K["position"]
    is_cnt = kind == K["count"]
    is_and3 = (kind == K["and"]) & (n_and == 3)
    is_pair = (kind == K["relation"]) | ((kind == K["and"]) & (n_and == 2))
    is_grid = is_cnt | is_and3

    cx = ccx.clone()
    cy = ccy.clone()
    r = rc.clone()
    cx[:, 0] = torch.where(is_single, x_any, torch.where(is_pos, px, torch.where(is_pair, pax, ccx[:, 0])))
    cy[:, 0] = torch.where(is_single, y_any, torch.where(is_pos, py, torch.where(is_pair, pay, ccy[:, 0])))
    r[:, 0] = torch.where(is_single | is_pos, r_single, torch.where(is_pair, ra, rc[:, 0]))
    cx[:, 1] = torch.where(is_pair, pbx, ccx[:, 1])
    cy[:, 1] = torch.where(is_pair, pby, ccy[:, 1])
    r[:, 1] = torch.where(is_pair, rb, rc[:, 1])
    n_obj = torch.where(is_single | is_pos, 1, torch.where(is_pair, 2, torch.where(is_and3, 3, cnt)))
    present = torch.arange(k, device=dev)[None, :] < n_obj[:, None]
    # counts: one colour and one shape for all objects
    col = torch.where(is_cnt[:, None], col[:, :1].expand(n, k), col)
    shp = torch.where(is_cnt[:, None], shp[:, :1].expand(n, k), shp)
    # sizes are said only for single, position and relation objects; otherwise they are not part of the caption
    sizable = (is_single | is_pos | (kind == K["relation"]))[:, None] & present
    said = said & sizable
    return dict(
        kind=kind,
        sub=sub,
        cnt=n_obj,
        color=col,
        shape=shp,
        cx=cx,
        cy=cy,
        radius=r,
        present=present,
        big=big & sizable,
        size_said=said,
        pair=is_pair & ~is_grid,
    )


_HO_PAIR_TABLE = torch.zeros(len(COLOR_NAMES), len(SHAPES), dtype=torch.bool)
for _c, _s in HELDOUT_PAIRS:
    _HO_PAIR_TABLE[COLOR_NAMES.index(_c), SHAPES.index(_s)] = True
_HO_ARR_TABLE = torch.zeros(len(COLOR_NAMES), 2, len(COLOR_NAMES), dtype=torch.bool)
for _a, _ax, _b in HELDOUT_ARRANGEMENTS:
    _HO_ARR_TABLE[COLOR_NAMES.index(_a), ("h", "v").index(_ax), COLOR_NAMES.index(_b)] = True


def heldout_mask(layout: dict, drawn: bool = True) -> torch.Tensor:
    """(n,) bool: the scene has a held-out colour-shape pair or two-object arrangement.

    ``drawn=True``: anywhere in the picture (what training must never show); ``False``: asked for by the
    caption (an "and" scene's arrangement is not said, so only relation captions count).
    """
    dev = layout["color"].device
    pairs = _HO_PAIR_TABLE.to(dev)[layout["color"], layout["shape"]] & layout["present"]
    sub = layout["sub"]
    first_low = (sub == 0) | (sub == 2)  # sub: 0 left of, 1 right of, 2 above, 3 below
    a, b = layout["color"][:, 0], layout["color"][:, 1]
    lo_c, hi_c = torch.where(first_low, a, b), torch.where(first_low, b, a)
    axis = (sub >= 2).long()
    arr = _HO_ARR_TABLE.to(dev)[lo_c, axis, hi_c] & layout["pair"]
    if not drawn:
        arr = arr & (layout["kind"] == KINDS.index("relation"))
    return pairs.any(1) | arr


def _take(layout: dict, keep: torch.Tensor) -> dict:
    return {k: v[keep] for k, v in layout.items()}


def sample_layout(
    n: int,
    gen: torch.Generator,
    size: int = 32,
    device="cpu",
    kinds: list[str] | None = None,
    split: str | None = None,
) -> dict:
    """Sample n scene layouts (no pixels): a dict of (n, MAX_OBJECTS) tensors plus per-scene vectors.

    ``split``: ``None`` any scene; ``"train"`` or ``"seen"`` only scenes that draw no held-out composition;
    ``"heldout"`` only scenes whose caption asks for one. Rejection sampling, deterministic for a given
    generator state.
    """
    dev = torch.device(device)
    if split is None:
        return _draw_layout(n, gen, size, dev, kinds)
    if split not in ("train", "seen", "heldout"):
        raise ValueError(f"split={split!r}: use None, 'train', 'seen' or 'heldout'")
    want_heldout = split == "heldout"
    parts: list[dict] = []
    have = 0
    while have < n:
        lay = _draw_layout(max(n - have, 16) * 2, gen, size, dev, kinds)
        keep = heldout_mask(lay, drawn=True) if not want_heldout else heldout_mask(lay, drawn=False)
        keep = keep if want_heldout else ~keep
        lay = _take(lay, keep)
        m = int(lay["kind"].shape[0])
        if m:
            parts.append(lay)
            have += m
    out = {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}
    return out


def render(layout: dict, size: int = 32) -> torch.Tensor:
    """Rasterise layouts to (n, 3, size, size) images in [0, 1] with 1-pixel anti-aliasing."""
    cx, cy, r = layout["cx"], layout["cy"], layout["radius"]
    dev = cx.device
    n, k = cx.shape
    g = torch.arange(size, device=dev, dtype=torch.float32) + 0.5
    X = g.view(1, 1, 1, size)
    Y = g.view(1, 1, size, 1)
    dx = X - cx[..., None, None]
    dy = Y - cy[..., None, None]
    rr = r[..., None, None]
    d_circle = torch.sqrt(dx * dx + dy * dy) - rr
    d_square = torch.maximum(dx.abs(), dy.abs()) - 0.886 * rr
    # upright triangle: apex (cx, cy - r), base y = cy + r, base half-width 1.1 r
    w = 1.1 * rr
    h = 2 * rr
    norm = torch.sqrt(h * h + w * w)
    d_side = (dx.abs() * h - w * (dy + rr)) / norm
    d_tri = torch.maximum(dy - rr, d_side)
    shp = layout["shape"][..., None, None]
    dist = torch.where(shp == 0, d_circle, torch.where(shp == 1, d_square, d_tri))
    cov = (0.5 - dist).clamp(0, 1) * layout["present"][..., None, None].float()  # (n, k, H, W)
    pal = torch.tensor(list(COLORS.values()), device=dev)
    rgb = pal[layout["color"]]  # (n, k, 3)
    img = torch.zeros(n, 3, size, size, device=dev)
    for j in range(k):  # paint in order; objects never overlap by construction
        a = cov[:, j : j + 1]
        img = img * (1 - a) + a * rgb[:, j, :, None, None]
    return img


def layout_specs(layout: dict) -> list[Spec]:
    kind = layout["kind"].tolist()
    sub = layout["sub"].tolist()
    cnt = layout["cnt"].tolist()
    col = layout["color"].tolist()
    shp = layout["shape"].tolist()
    big = layout["big"].tolist()
    said = layout["size_said"].tolist()
    out = []
    for i in range(len(kind)):
        kn = KINDS[kind[i]]
        objs = [(COLOR_NAMES[col[i][j]], SHAPES[shp[i][j]]) for j in range(MAX_OBJECTS)]
        sizes = _sizes([SIZES[int(big[i][j])] if said[i][j] else None for j in range(2)])
        if kn == "single":
            out.append(Spec(kn, objs[:1], sizes=sizes[:1]))
        elif kn == "position":
            out.append(Spec(kn, objs[:1], position=POSITIONS[sub[i]], sizes=sizes[:1]))
        elif kn == "relation":
            out.append(Spec(kn, objs[:2], relation=RELATIONS[sub[i]], sizes=sizes))
        elif kn == "and":
            out.append(Spec(kn, objs[: cnt[i]]))
        else:
            out.append(Spec(kn, objs[:1], count=cnt[i]))
    return out


def sample_scenes(
    n: int, seed: int | None = None, size: int = 32, device="cpu", generator=None, kinds=None, split=None
) -> SceneBatch:
    """n random scenes with captions. Deterministic for a given (seed, n, size, device, split)."""
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else seed)
    lay = sample_layout(n, generator, size=size, device=device, kinds=kinds, split=split)
    img = render(lay, size=size)
    specs = layout_specs(lay)
    return SceneBatch(
        images=img,
        captions=[sp.caption() for sp in specs],
        specs=specs,
        present=lay["present"],
        color=lay["color"],
        shape=lay["shape"],
        cx=lay["cx"],
        cy=lay["cy"],
        radius=lay["radius"],
    )


VALIDATION_OFFSET = 0x5EED_0F_7A11  # validation prompts come from their own seed stream


def benchmark_prompts(n: int, seed: int = 1234, split: str = "seen") -> list[Spec]:
    """A fixed, balanced set of n prompts, cycling over kinds.

    ``split``: ``"seen"`` compositions shown in training, ``"heldout"`` compositions never shown, or
    ``"validation"`` (for choosing settings): alternately seen and held-out, from a seed stream of its own.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {', '.join(SPLITS)}")
    if split == "validation":
        half = benchmark_prompts((n + 1) // 2, seed + VALIDATION_OFFSET, "seen")
        other = benchmark_prompts(n // 2, seed + VALIDATION_OFFSET, "heldout")
        return [x for pair in zip(half, other) for x in pair] + half[len(other) :]
    g = torch.Generator().manual_seed(seed)
    per = [KINDS[i % len(KINDS)] for i in range(n)]
    by: dict[str, list[Spec]] = {}
    for kn in KINDS:
        m = per.count(kn)
        if m:
            by[kn] = layout_specs(sample_layout(m, g, kinds=[kn], split=split))
    # interleave so a prefix of the list is balanced too
    return [by[kn].pop(0) for kn in per]
