"""Procedural scenes with exact captions: the demo model's training data and the benchmark's prompts.

Every scene is drawn by a vectorised torch rasteriser (runs on CPU or GPU), from a seeded
``torch.Generator``, so a batch is a pure function of (seed, batch size, device).

Caption grammar (word-level, lower case)::

    single      a red circle
    position    a red circle at the top|bottom|left|right
    relation    a red circle left of|right of|above|below a blue square
    and         a red circle and a blue square
    count       two|three red circles

Images are ``size x size`` (default 32) RGB in [0, 1] on a black background.
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
NUMBERS = {2: "two", 3: "three"}
KINDS = ["single", "position", "relation", "and", "count"]
KIND_PROBS = [0.12, 0.20, 0.43, 0.10, 0.15]

# every word the grammar can produce (the tokenizer's vocabulary is built from this)
WORDS = sorted(
    set(COLOR_NAMES)
    | set(SHAPES)
    | set(PLURAL.values())
    | {"a", "at", "the", "and", "of", "left", "right", "above", "below", "top", "bottom"}
    | set(NUMBERS.values())
)


@dataclass
class Spec:
    """What a caption asks for, in checkable form."""

    kind: str
    objects: list[tuple[str, str]] = field(default_factory=list)  # (colour, shape), in caption order
    position: str | None = None  # for kind == "position"
    relation: str | None = None  # for kind == "relation": objects[0] <relation> objects[1]
    count: int | None = None  # for kind == "count"

    def caption(self) -> str:
        if self.kind == "count":
            c, s = self.objects[0]
            assert self.count is not None
            return f"{NUMBERS[self.count]} {c} {PLURAL[s]}"
        (c1, s1) = self.objects[0]
        if self.kind == "single":
            return f"a {c1} {s1}"
        if self.kind == "position":
            return f"a {c1} {s1} at the {self.position}"
        (c2, s2) = self.objects[1]
        if self.kind == "relation":
            return f"a {c1} {s1} {self.relation} a {c2} {s2}"
        return f"a {c1} {s1} and a {c2} {s2}"


def parse_caption(text: str) -> Spec | None:
    """Parse a caption of the grammar above; ``None`` if it is not one."""
    w = text.lower().replace(",", " ").replace(".", " ").split()
    plural_inv = {v: k for k, v in PLURAL.items()}
    num_inv = {v: k for k, v in NUMBERS.items()}
    try:
        if w[0] in num_inv and len(w) == 3 and w[1] in COLORS and w[2] in plural_inv:
            return Spec("count", [(w[1], plural_inv[w[2]])], count=num_inv[w[0]])
        if w[0] not in ("a", "an") or w[1] not in COLORS or w[2] not in SHAPES:
            return None
        first = (w[1], w[2])
        rest = w[3:]
        if not rest:
            return Spec("single", [first])
        if rest[:2] == ["at", "the"] and len(rest) == 3 and rest[2] in POSITIONS:
            return Spec("position", [first], position=rest[2])
        for rel in [*RELATIONS, "and"]:
            rw = rel.split()
            if rest[: len(rw)] == rw:
                tail = rest[len(rw) :]
                if len(tail) == 3 and tail[0] in ("a", "an") and tail[1] in COLORS and tail[2] in SHAPES:
                    second = (tail[1], tail[2])
                    if rel == "and":
                        return Spec("and", [first, second])
                    return Spec("relation", [first, second], relation=rel)
        return None
    except IndexError:
        return None


@dataclass
class SceneBatch:
    images: torch.Tensor  # (n, 3, size, size) in [0, 1]
    captions: list[str]
    specs: list[Spec]
    # per-object ground truth, (n, 3) each; objects not present have present == False
    present: torch.Tensor
    color: torch.Tensor
    shape: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    radius: torch.Tensor


def _u(gen, shape, lo, hi, device):
    return lo + (hi - lo) * torch.rand(shape, generator=gen, device=device)


def sample_layout(n: int, gen: torch.Generator, size: int = 32, device="cpu", kinds: list[str] | None = None):
    """Sample n scene layouts (no pixels): returns a dict of (n, 3) tensors plus kind/sub-index vectors."""
    dev = torch.device(device)
    s = float(size)
    k = 3
    if kinds is None:
        kind = torch.multinomial(torch.tensor(KIND_PROBS, device=dev), n, replacement=True, generator=gen)
    else:
        allowed = torch.tensor([KINDS.index(x) for x in kinds], device=dev)
        kind = allowed[torch.randint(0, len(allowed), (n,), generator=gen, device=dev)]
    nc = len(COLOR_NAMES)
    c0 = torch.randint(0, nc, (n,), generator=gen, device=dev)
    c1 = (c0 + torch.randint(1, nc, (n,), generator=gen, device=dev)) % nc  # second colour differs
    col = torch.stack([c0, c1, c0], 1)
    shp = torch.randint(0, len(SHAPES), (n, k), generator=gen, device=dev)
    sub = torch.randint(0, 4, (n,), generator=gen, device=dev)  # position / relation index
    cnt = torch.randint(2, 4, (n,), generator=gen, device=dev)  # 2 or 3
    cx = torch.zeros(n, k, device=dev)
    cy = torch.zeros(n, k, device=dev)
    r = torch.zeros(n, k, device=dev)
    present = torch.zeros(n, k, dtype=torch.bool, device=dev)
    sc = s / 32.0

    # --- single objects (anywhere) ---
    r_single = _u(gen, (n,), 5.0 * sc, 8.0 * sc, dev)
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

    # --- pairs: separation d along the relation's axis, |offset| <= d/2 on the other ---
    ra = _u(gen, (n,), 4.5 * sc, 7.0 * sc, dev)
    rb = _u(gen, (n,), 4.5 * sc, 7.0 * sc, dev)
    dmin = ra + rb + 2 * sc
    dmax = s - ra - rb
    d = dmin + _u(gen, (n,), 0, 1, dev) * (dmax - dmin)
    # relation index for "and" captions is random too (sub), it just is not said
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

    # --- counts: distinct cells of a 3x3 grid, jittered ---
    cell = s / 3.0
    rc = _u(gen, (n, k), 3.2 * sc, 4.2 * sc, dev)
    cells = torch.argsort(torch.rand(n, 9, generator=gen, device=dev), dim=1)[:, :k]
    jit = (cell / 2 - rc - 0.7 * sc).clamp(min=0)
    ccx = (cells % 3).float() * cell + cell / 2 + _u(gen, (n, k), -1, 1, dev) * jit
    ccy = (cells // 3).float() * cell + cell / 2 + _u(gen, (n, k), -1, 1, dev) * jit

    K = {name: i for i, name in enumerate(KINDS)}
    is_single = kind == K["single"]
    is_pos = kind == K["position"]
    is_pair = (kind == K["relation"]) | (kind == K["and"])
    is_cnt = kind == K["count"]

    cx[:, 0] = torch.where(is_single, x_any, torch.where(is_pos, px, torch.where(is_pair, pax, ccx[:, 0])))
    cy[:, 0] = torch.where(is_single, y_any, torch.where(is_pos, py, torch.where(is_pair, pay, ccy[:, 0])))
    r[:, 0] = torch.where(is_single | is_pos, r_single, torch.where(is_pair, ra, rc[:, 0]))
    cx[:, 1] = torch.where(is_pair, pbx, ccx[:, 1])
    cy[:, 1] = torch.where(is_pair, pby, ccy[:, 1])
    r[:, 1] = torch.where(is_pair, rb, rc[:, 1])
    cx[:, 2], cy[:, 2], r[:, 2] = ccx[:, 2], ccy[:, 2], rc[:, 2]
    present[:, 0] = True
    present[:, 1] = is_pair | is_cnt
    present[:, 2] = is_cnt & (cnt == 3)
    # counts: one colour and one shape for all objects
    col = torch.where(is_cnt[:, None], c0[:, None].expand(n, k), col)
    shp = torch.where(is_cnt[:, None], shp[:, :1].expand(n, k), shp)
    return dict(kind=kind, sub=sub, cnt=cnt, color=col, shape=shp, cx=cx, cy=cy, radius=r, present=present)


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
    out = []
    for i in range(len(kind)):
        kn = KINDS[kind[i]]
        o1 = (COLOR_NAMES[col[i][0]], SHAPES[shp[i][0]])
        o2 = (COLOR_NAMES[col[i][1]], SHAPES[shp[i][1]])
        if kn == "single":
            out.append(Spec(kn, [o1]))
        elif kn == "position":
            out.append(Spec(kn, [o1], position=POSITIONS[sub[i]]))
        elif kn == "relation":
            out.append(Spec(kn, [o1, o2], relation=RELATIONS[sub[i]]))
        elif kn == "and":
            out.append(Spec(kn, [o1, o2]))
        else:
            out.append(Spec(kn, [o1], count=cnt[i]))
    return out


def sample_scenes(
    n: int, seed: int | None = None, size: int = 32, device="cpu", generator=None, kinds=None
) -> SceneBatch:
    """n random scenes with captions. Deterministic for a given (seed, n, size, device)."""
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else seed)
    lay = sample_layout(n, generator, size=size, device=device, kinds=kinds)
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


def benchmark_prompts(n: int, seed: int = 1234) -> list[Spec]:
    """A fixed, balanced set of n prompts (held out by seed from training's stream), cycling over kinds."""
    g = torch.Generator().manual_seed(seed)
    specs: list[Spec] = []
    per = [KINDS[i % len(KINDS)] for i in range(n)]
    for kn in KINDS:
        m = per.count(kn)
        if m:
            lay = sample_layout(m, g, kinds=[kn])
            specs.extend(layout_specs(lay))
    # interleave so a prefix of the list is balanced too
    by = {kn: [s for s in specs if s.kind == kn] for kn in KINDS}
    return [by[kn].pop(0) for kn in per]
