"""TorchScript-compatible torch port of :func:`mssn_monai.ops.peaks.find_peaks`.

:func:`find_peaks_torch` returns exactly the points, scores and order of
:func:`~mssn_monai.ops.peaks.find_peaks` (see that module for the semantics), but runs on a tensor on its
own device and can be compiled with ``torch.jit.script`` (e.g. inside the ``forward`` of a scripted
module): no numpy, no scipy, only typed functions and loops.

The steps and their torch form:

1. Peak mask: the maximum over the disk footprint is computed as a running maximum along each row (one
   ``torch.maximum`` per unit of half-width, on shifted slices, so cells outside the map count as
   ``-inf``), folded over the footprint's rows by vertical shifts. NaN cells read as ``-inf``; the
   threshold is compared in float64. The mask is built in bands of rows (each with the footprint's
   reach above and below), so its temporaries do not grow with the map: a 40000x30000 field's map has
   75M cells.
2. Plateaus: the peak cells are grouped into horizontal runs of equal values; the runs touching an
   equal-valued run of the next row (8-connectivity, found in a dense index map or by ``searchsorted``
   on the cells' raster keys) are joined by FastSV-style hooking and shortcutting until the labels
   agree along every contact. Per plateau, the cell nearest to the centroid (``size**2 * squared
   distance`` in int64, float64 for huge plateaus, as in numpy), ties to the first in raster order, is
   found with two ``scatter_reduce``.
3. Spacing: after step 1 only points of equal score can be closer than ``min_distance_px`` (each lies in
   the other's footprint), so the close pairs are looked for among those points only (all pairs, or
   one lookup per footprint offset when there are many). The greedy suppression in output order is
   decided over those pairs in parallel rounds, with a sequential finish for long chains.
"""

import math

import torch

__all__ = ["find_peaks_torch"]


def _disk_half_widths(min_distance_px: float, stride: int) -> list[int]:
    """Half-widths of the rows of the disk footprint of ``find_peaks``.

    The footprint is the cells ``(dy, dx)`` with ``(dy**2 + dx**2) * stride**2 < min_distance_px**2``
    (``|dy|, |dx| <= r = max(ceil(min_distance_px / stride) - 1, 0)``), plus the centre cell. Each of its
    rows is a symmetric run of cells.

    Returns:
        ``[a_0, ..., a_r]``: row ``dy = ±k`` of the footprint is ``dx`` in ``[-a_k, a_k]`` (``a_k >= 0``,
        non-increasing in ``k``).
    """
    r = max(int(math.ceil(min_distance_px / stride)) - 1, 0)
    md2 = min_distance_px**2  # the same expression as the numpy version (bit-identical threshold)
    s2 = stride * stride
    widths: list[int] = []
    for k in range(r + 1):
        a = 0
        for dx in range(1, r + 1):
            if float((k * k + dx * dx) * s2) < md2:
                a = dx
        widths.append(a)
    return widths


def _disk_max(work: torch.Tensor, widths: list[int]) -> torch.Tensor:
    """``(h, w)`` maximum of ``work`` over the footprint given by ``widths``; cells outside count as ``-inf``."""
    h = work.shape[0]
    w = work.shape[1]
    row_max = work.clone()  # max over dx in [-a, a] along the row, grown one unit of a at a time
    out = torch.full_like(work, -math.inf)
    a = 0
    for k in range(len(widths) - 1, -1, -1):  # outer rows first: their half-width is the smallest
        while a < widths[k]:
            a += 1
            if a < w:
                left = row_max[:, : w - a]
                torch.maximum(left, work[:, a:], out=left)
                right = row_max[:, a:]
                torch.maximum(right, work[:, : w - a], out=right)
        if k < h:
            top = out[: h - k]
            torch.maximum(top, row_max[k:], out=top)
            if k > 0:
                bottom = out[k:]
                torch.maximum(bottom, row_max[: h - k], out=bottom)
    return out


def _peak_cells(
    scores: torch.Tensor, threshold: float, widths: list[int], band_cells: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns (raster order) of the cells that reach ``threshold`` and equal their footprint's maximum.

    Computed in bands of rows (each with the footprint's reach of rows above and below), so the float64
    temporaries stay near ``band_cells`` cells whatever the map's size; the cells found are those of the
    whole map at once (a cell's footprint maximum reads only rows within its reach).
    """
    h = scores.shape[0]
    w = scores.shape[1]
    reach = len(widths) - 1
    band = max(1, band_cells // max(w, 1))
    found_rows: list[torch.Tensor] = []
    found_cols: list[torch.Tensor] = []
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        y0 = max(0, r0 - reach)
        y1 = min(h, r1 + reach)
        src = scores[y0:y1]
        if src.dtype != torch.float32 and src.dtype != torch.float64:
            src = src.to(torch.float64)  # exact for half, bfloat16 and small ints
        work = src.masked_fill(torch.isnan(src), -math.inf)  # a copy: the caller's map is never written
        core = work[r0 - y0 : r1 - y0]
        mask = core.to(torch.float64) >= threshold
        if not bool(mask.any()):
            continue
        mask &= core == _disk_max(work, widths)[r0 - y0 : r1 - y0]
        cells = mask.nonzero()
        found_rows.append(cells[:, 0] + r0)
        found_cols.append(cells[:, 1])
    if len(found_rows) == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=scores.device)
        return empty, empty
    return torch.cat(found_rows).contiguous(), torch.cat(found_cols).contiguous()


def _cell_lookup(
    rows: torch.Tensor, cols: torch.Tensor, h: int, w: int, dense_cells: int = 4194304
) -> tuple[torch.Tensor, torch.Tensor]:
    """A lookup table from map cells to indices into ``rows``/``cols`` (distinct cells), for :func:`_locate`.

    Returns:
        ``(keys, index)``: when the cells are many (over 1/32 of a map of at most ``dense_cells`` cells),
        ``keys`` is empty and ``index`` is a dense ``(h * w,)`` map (``-1`` off the cells); otherwise
        ``keys`` are the cells' sorted raster keys ``row * w + col`` and ``index`` the matching indices.
    """
    n = rows.numel()
    keys = rows * w + cols
    if n * 32 > h * w and h * w <= dense_cells:
        index = torch.full((h * w,), -1, dtype=torch.int64, device=rows.device)
        index[keys] = torch.arange(n, dtype=torch.int64, device=rows.device)
        return keys[:0], index
    sorted_keys, order = torch.sort(keys)
    return sorted_keys, order


def _locate(
    keys: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Index of the cell ``(rows, cols)`` in a :func:`_cell_lookup` table; ``-1`` off the map or the cells."""
    valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    k = torch.where(valid, rows * w + cols, 0)
    if keys.numel() == 0 and index.numel() == h * w:  # dense map
        pos = index.index_select(0, k)
    else:
        at = torch.searchsorted(keys, k).clamp_max(max(keys.numel() - 1, 0))
        pos = torch.where(keys.index_select(0, at) == k, index.index_select(0, at), -1)
    return torch.where(valid, pos, -1)


def _plateau_representatives(
    rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """One cell per 8-connected group of equal-valued peak cells.

    The cells are grouped into horizontal runs of equal values first; the runs are joined along their
    (deduplicated) contacts with the runs of the next row by FastSV-style hooking and shortcutting
    (Zhang, Azad and Hu, 2020), until the labels agree along every contact.

    Args:
        rows, cols: int64 ``(n,)`` peak cells, in raster order.
        vals: float64 ``(n,)`` their scores (NaN never equals anything).
        h, w: map shape.

    Returns:
        int64 ``(K,)`` increasing indices into ``rows``: per plateau its cell nearest to the plateau's
        centroid, ties to the first in raster order.
    """
    n = rows.numel()
    idx = torch.arange(n, dtype=torch.int64, device=rows.device)
    # horizontal runs: a cell continues the run of the cell before it in raster order
    cont = torch.zeros(n, dtype=torch.bool, device=rows.device)
    if n > 1:
        cont[1:] = (rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1] + 1) & (vals[1:] == vals[:-1])
    run = (~cont).cumsum(0) - 1  # run of each cell; runs are numbered in raster order of their first cell
    n_runs = int(run[-1]) + 1
    # contacts between a run and a run of the next row: 8-neighbours of equal value
    keys, index = _cell_lookup(rows, cols, h, w)
    srcs: list[torch.Tensor] = []
    dsts: list[torch.Tensor] = []
    below = rows + 1
    for dc in [-1, 0, 1]:
        pos = _locate(keys, index, below, cols + dc, h, w)
        a = (pos >= 0).nonzero().flatten()
        b = pos.index_select(0, a)
        same = (vals.index_select(0, a) == vals.index_select(0, b)).nonzero().flatten()
        a = a.index_select(0, same)
        b = b.index_select(0, same)
        ra = run.index_select(0, a)
        rb = run.index_select(0, b)
        # non-decreasing in ra, then in rb: the consecutive duplicates are all the duplicates
        fresh = torch.ones_like(ra, dtype=torch.bool)
        if ra.numel() > 1:
            fresh[1:] = (ra[1:] != ra[:-1]) | (rb[1:] != rb[:-1])
        new_idx = fresh.nonzero().flatten()
        srcs.append(ra.index_select(0, new_idx))
        dsts.append(rb.index_select(0, new_idx))
    src = torch.cat(srcs)
    dst = torch.cat(dsts)
    if src.numel() == 0 and n_runs == n:
        return idx
    # label of each run: the smallest run of its plateau. Labels only decrease and always name a run of
    # the same plateau with a number <= the run's own.
    lab = torch.arange(n_runs, dtype=torch.int64, device=rows.device)
    while src.numel() > 0:
        grand = lab.index_select(0, lab)
        g_src = grand.index_select(0, src)
        g_dst = grand.index_select(0, dst)
        lab = lab.scatter_reduce(0, lab.index_select(0, src), g_dst, "amin")  # hook the parents
        lab = lab.scatter_reduce(0, lab.index_select(0, dst), g_src, "amin")
        lab = lab.scatter_reduce(0, src, g_dst, "amin")  # hook the runs
        lab = lab.scatter_reduce(0, dst, g_src, "amin")
        lab = torch.minimum(lab, grand)
        jumped = lab.index_select(0, lab)
        while not torch.equal(jumped, lab):  # shortcut to the roots
            lab = jumped
            jumped = lab.index_select(0, lab)
        if torch.equal(lab.index_select(0, src), lab.index_select(0, dst)):  # one label per plateau
            break
    comp = lab.index_select(0, run)  # plateau of each cell
    zeros = torch.zeros(n_runs, dtype=torch.int64, device=rows.device)
    size = zeros.scatter_add(0, comp, torch.ones_like(comp))
    sum_r = zeros.scatter_add(0, comp, rows)
    sum_c = zeros.scatter_add(0, comp, cols)
    sz = size.index_select(0, comp)
    if int(size.max()) * max(h, w) < 2**31:  # size^2 * squared distance to the centroid, exact in int64
        dr = sz * rows - sum_r.index_select(0, comp)
        dc = sz * cols - sum_c.index_select(0, comp)
        dist = dr * dr + dc * dc
    else:  # a plateau of millions of cells: compare in float64, as the numpy version does
        szf = sz.to(torch.float64)
        drf = rows.to(torch.float64) - sum_r.index_select(0, comp).to(torch.float64) / szf
        dcf = cols.to(torch.float64) - sum_c.index_select(0, comp).to(torch.float64) / szf
        dist = drf * drf + dcf * dcf
    best_dist = dist.scatter_reduce(0, comp, dist, "amin", include_self=False)
    first = torch.where(dist == best_dist.index_select(0, comp), idx, n)
    best = first.scatter_reduce(0, comp, first, "amin", include_self=False)
    return (best.index_select(0, comp) == idx).nonzero().flatten()


def _close_pairs(
    rows: torch.Tensor, cols: torch.Tensor, h: int, w: int, min_distance_px: float, stride: int, widths: list[int]
) -> torch.Tensor:
    """Index pairs ``(i, j)``, ``i < j``, of cells closer than ``min_distance_px`` (``stride`` px per cell).

    Returns:
        int64 ``(P, 2)``, in no particular order.
    """
    m = rows.numel()
    md2 = min_distance_px**2
    s2 = float(stride * stride)
    n_offsets = widths[0]  # footprint offsets after the centre in raster order: half the footprint
    for k in range(1, len(widths)):
        n_offsets += 2 * widths[k] + 1
    if n_offsets == 0:  # the footprint is the centre cell: cells are never closer than min_distance_px
        return torch.zeros((0, 2), dtype=torch.int64, device=rows.device)
    idx = torch.arange(m, dtype=torch.int64, device=rows.device)
    # all pairs costs ~m * m; a lookup per offset ~n_offsets * (8 * m + a fixed cost per tensor op)
    if m * m <= n_offsets * (8 * m + 20000):  # all pairs, in chunks of about 1M entries
        found: list[torch.Tensor] = []
        chunk = max(1, 1048576 // m)
        for start in range(0, m, chunk):
            stop = min(start + chunk, m)
            dr = rows[start:stop, None] - rows[None, :]
            dc = cols[start:stop, None] - cols[None, :]
            close = ((dr * dr + dc * dc).to(torch.float64) * s2 < md2) & (idx[start:stop, None] < idx[None, :])
            ij = close.nonzero()
            ij[:, 0] += start
            found.append(ij)
        return torch.cat(found)
    # one lookup per footprint offset (dy, dx) after the centre: (dy, dx) with dy > 0, or dy == 0 and dx > 0
    keys, index = _cell_lookup(rows, cols, h, w)
    pairs: list[torch.Tensor] = []
    for dy in range(len(widths)):
        a = widths[dy]
        for dx in range(-a, a + 1):
            if dy == 0 and dx <= 0:
                continue
            pos = _locate(keys, index, rows + dy, cols + dx, h, w)
            hit = (pos >= 0).nonzero().flatten()
            j = pos.index_select(0, hit)
            pairs.append(torch.stack([torch.minimum(hit, j), torch.maximum(hit, j)], dim=1))
    return torch.cat(pairs)


def _greedy_keep(first: torch.Tensor, second: torch.Tensor, k: int, max_rounds: int = 64) -> torch.Tensor:
    """Greedy suppression of ``k`` points in their order, given the pairs of points closer than allowed.

    A point is kept unless an earlier point it is paired with is kept. Decided in parallel rounds (a
    point with no undecided earlier partner is kept and drops its later partners); after ``max_rounds``
    rounds (long chains of close points) the remaining pairs are visited one by one.

    Args:
        first, second: int64 ``(P,)``, the pairs, ``first < second`` (indices into the ``k`` points).
        k: number of points.
        max_rounds: parallel rounds before the sequential finish.

    Returns:
        bool ``(k,)``: the points kept.
    """
    device = first.device
    by_pair = torch.sort(first * k + second)[1]  # (earlier, later): the order of the sequential finish
    first = first.index_select(0, by_pair)
    second = second.index_select(0, by_pair)
    state = torch.zeros(k, dtype=torch.int8, device=device)  # 0 undecided, 1 kept, 2 dropped
    rounds = 0
    while first.numel() > 0 and rounds < max_rounds:  # each remaining pair joins two undecided points
        blocked = torch.zeros(k, dtype=torch.bool, device=device).index_fill(0, second, True)
        state = state.masked_fill((state == 0) & ~blocked, 1)
        kept = (state.index_select(0, first) == 1).nonzero().flatten()
        state = state.index_fill(0, second.index_select(0, kept), 2)
        live = ((state.index_select(0, first) == 0) & (state.index_select(0, second) == 0)).nonzero().flatten()
        first = first.index_select(0, live)
        second = second.index_select(0, live)
        rounds += 1
    keep = state != 2
    if first.numel() > 0:
        keep_list: list[bool] = keep.tolist()
        first_list: list[int] = first.tolist()
        second_list: list[int] = second.tolist()
        for t in range(len(first_list)):
            if keep_list[first_list[t]]:
                keep_list[second_list[t]] = False
        keep = torch.tensor(keep_list, dtype=torch.bool, device=device)
    return keep


def find_peaks_torch(
    scores: torch.Tensor, threshold: float, min_distance_px: float, stride: int = 4, band_cells: int = 4194304
) -> torch.Tensor:
    """Candidate points: thresholded local maxima of a dense map, one per plateau, at least ``min_distance_px`` apart.

    Torch port of :func:`mssn_monai.ops.peaks.find_peaks`, compatible with ``torch.jit.script``: the same
    points in the same order, as a tensor on the device of ``scores``.

    Args:
        scores: ``(h, w)`` tensor of scores (probabilities), on any device; not modified. NaN cells are
            ignored.
        threshold: minimum score of a peak (inclusive: ``score >= threshold``), compared in float64.
        min_distance_px: minimum Euclidean distance between two output points, in input pixels (points
            closer than this suppress the lower one; exactly this far apart both stay). ``0`` keeps every
            cell that passes the threshold, except duplicate plateau cells.
        stride: input pixels per map cell (the FNR output stride, 4).
        band_cells: map cells per band of rows in which the peak mask is built (default 4M, 32 MB per
            float64 temporary); the result does not depend on it, only the peak memory does.

    Returns:
        ``(N, 3)`` tensor of ``(x, y, score)`` with ``x = stride * col`` and ``y = stride * row`` in input
        pixels, sorted by descending score, ties in raster order (row, then column) of the map; ``(0, 3)``
        when there is no peak. Same device as ``scores``; same dtype when ``scores`` is floating point
        (float64 otherwise). The scores are the map's values; coordinates are exact in float32 below
        ``2**24`` px.

    Raises:
        ValueError: when ``scores`` is not 2-D, ``threshold`` is NaN, ``min_distance_px`` is negative or
            not finite, or ``stride`` is not a positive int.

    Example:
        >>> m = torch.tensor([[0.0, 0.1, 0.0, 0.0, 0.0],
        ...                   [0.1, 0.9, 0.2, 0.0, 0.8],
        ...                   [0.0, 0.2, 0.0, 0.0, 0.0]])
        >>> find_peaks_torch(m, threshold=0.5, min_distance_px=8)
        tensor([[ 4.0000,  4.0000,  0.9000],
                [16.0000,  4.0000,  0.8000]])
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError("stride must be a positive int.")
    if band_cells < 1:
        raise ValueError("band_cells must be >= 1.")
    if not (math.isfinite(min_distance_px) and min_distance_px >= 0):
        raise ValueError("min_distance_px must be a finite number >= 0.")
    if math.isnan(threshold):
        raise ValueError("threshold must be a number, got nan.")
    if scores.dim() != 2:
        raise ValueError("scores must be a 2-D (h, w) map, got shape " + str(list(scores.shape)) + ".")
    md = float(min_distance_px)
    out_dtype = scores.dtype if scores.is_floating_point() else torch.float64
    device = scores.device
    h = scores.shape[0]
    w = scores.shape[1]
    if h == 0 or w == 0:
        return torch.empty((0, 3), dtype=out_dtype, device=device)
    widths = _disk_half_widths(md, stride)
    rows, cols = _peak_cells(scores.detach(), threshold, widths, band_cells)  # raster order
    if rows.numel() == 0:
        return torch.empty((0, 3), dtype=out_dtype, device=device)
    flat = rows * w + cols
    vals = scores.detach().reshape(-1).index_select(0, flat).to(torch.float64)
    reps = _plateau_representatives(rows, cols, vals, h, w)  # raster order
    order = reps.index_select(0, torch.sort(-vals.index_select(0, reps), stable=True)[1])  # NaN last
    rows = rows.index_select(0, order)
    cols = cols.index_select(0, order)
    vals = vals.index_select(0, order)
    k = rows.numel()
    if k >= 2 and md > 0:
        # only points of equal (NaN read as -inf) score can be closer than md: look among those only
        wv = vals.masked_fill(torch.isnan(vals), -math.inf)
        sv, sidx = torch.sort(wv)
        same = (sv[1:] == sv[:-1]).nonzero().flatten()
        shared = torch.zeros(k, dtype=torch.bool, device=device).index_fill(0, sidx.index_select(0, same), True)
        shared = shared.index_fill(0, sidx.index_select(0, same + 1), True)
        cand = shared.nonzero().flatten()  # increasing: the output order
        if cand.numel() >= 2:
            c_rows = rows.index_select(0, cand)
            c_cols = cols.index_select(0, cand)
            pairs = _close_pairs(c_rows, c_cols, h, w, md, stride, widths)
            if pairs.shape[0] > 0:
                keep = _greedy_keep(cand.index_select(0, pairs[:, 0]), cand.index_select(0, pairs[:, 1]), k)
                kept = keep.nonzero().flatten()
                rows = rows.index_select(0, kept)
                cols = cols.index_select(0, kept)
                vals = vals.index_select(0, kept)
    xy = torch.stack([cols * stride, rows * stride], dim=1).to(torch.float64)
    return torch.cat([xy, vals[:, None]], dim=1).to(out_dtype)
