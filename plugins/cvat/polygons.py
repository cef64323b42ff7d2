"""A mask's outline as a CVAT polygon, for polygon tracks (which CVAT can interpolate).

The outline is the outer boundary of the mask's largest connected part (8-connected), traced
through pixel centres (Moore-neighbour tracing) and simplified (Douglas-Peucker, one pixel):
holes and smaller parts are left out, which is what a polygon track can hold.
"""

from __future__ import annotations

import numpy as np

# clockwise from west, as (dy, dx)
_DIRS = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1))


def _trace(mask: np.ndarray, start: tuple[int, int]) -> list[tuple[int, int]]:
    """Outer boundary (y, x) of the part holding ``start``, the first foreground pixel of
    that part in raster order (so its west neighbour is background). ``mask`` is padded."""
    boundary, p, back = [start], start, 0
    second = None
    while True:
        for i in range(1, 9):
            d = (back + i) % 8
            q = (p[0] + _DIRS[d][0], p[1] + _DIRS[d][1])
            if mask[q]:
                break
        else:
            return boundary  # a lone pixel
        came_from = (back + i - 1) % 8  # the last background cell looked at
        cell = (p[0] + _DIRS[came_from][0], p[1] + _DIRS[came_from][1])
        if p == start and second is not None and q == second:
            return boundary[:-1]  # back at the start, about to repeat the first step
        if second is None:
            second = q
        p = q
        back = _DIRS.index((cell[0] - p[0], cell[1] - p[1]))
        boundary.append(p)


def _area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _simplify(points: np.ndarray, eps: float) -> np.ndarray:
    """Douglas-Peucker on an open chain (first and last point kept)."""
    keep = np.zeros(len(points), bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        seg = points[b] - points[a]
        rel = points[a + 1:b] - points[a]
        norm = float(np.hypot(*seg))
        dist = np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / norm if norm else \
            np.hypot(rel[:, 0], rel[:, 1])
        i = int(np.argmax(dist))
        if dist[i] > eps:
            keep[a + 1 + i] = True
            stack += [(a, a + 1 + i), (a + 1 + i, b)]
    return points[keep]


def largest_part(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected part of a mask, found on its row runs (union-find over runs:
    fast on large frames)."""
    mask = np.asarray(mask, bool)
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # exclusive; same row-major order as the starts
    if rows.size == 0:
        return np.zeros_like(mask)
    parent = list(range(rows.size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))  # runs of row y: first[y]..
    for y in range(mask.shape[0] - 1):
        a, a_end, b, b_end = first[y], first[y + 1], first[y + 1], first[y + 2]
        while a < a_end and b < b_end:  # runs touching (diagonals too) across the two rows
            if starts[a] <= ends[b] and starts[b] <= ends[a]:
                parent[find(a)] = find(b)
            if ends[a] < ends[b]:
                a += 1
            else:
                b += 1
    roots = np.array([find(i) for i in range(rows.size)])
    sizes = np.bincount(roots, weights=ends - starts)
    keep = np.nonzero(roots == int(np.argmax(sizes)))[0]
    out = np.zeros_like(mask)
    for i in keep:
        out[rows[i], starts[i]:ends[i]] = True
    return out


def outline(mask: np.ndarray, eps: float = 1.0) -> list[float] | None:
    """``[x0, y0, x1, y1, ...]`` of the largest part's outline; None when that part has no
    area (a polygon needs three points)."""
    work = np.pad(largest_part(mask), 1)
    ys, xs = np.nonzero(work)
    if ys.size == 0:
        return None
    pts = np.array([(x, y) for y, x in _trace(work, (int(ys[0]), int(xs[0])))], float)
    if len(pts) < 3 or _area(pts) == 0:
        return None
    closed = np.vstack([pts, pts[:1]])
    simple = _simplify(closed, eps)[:-1] - 1.0  # drop the repeated start; undo the padding
    if len(simple) < 3:
        return None
    return [float(v) for v in simple.reshape(-1)]
