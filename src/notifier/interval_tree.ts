// An interval tree in the arena: the kernel's interval_tree (an augmented rbtree of closed
// intervals [start, last]) as an AVL tree with parent links, each node augmented with the
// largest `last` in its subtree. Nodes are embedded in their owner's struct (an
// mmu_interval_notifier embeds one), so the tree allocates nothing; the root is one arena
// word that holds a node offset (0 = empty).
//
// Order: by start; equal starts keep insertion order (a new node goes right of equals), so
// iteration order does not depend on the schedule that built the tree.
// Queries: iter_first/iter_next visit, in that order, exactly the nodes overlapping
// [start, last], pruning by the subtree max, so a query costs O(log n + k).
// Nothing here locks: the caller serialises writers (the notifier's spinlock) and keeps the
// tree still while a reader walks it (the notifier's odd invalidate_seq).

import type { Arena } from '../shm/arena.js';
import { defineStruct } from '../shm/layout.js';

/** struct interval_tree_node. Must sit at an even word offset (three Float64 fields). */
export const ITNodeL = defineStruct('interval_tree_node', {
  start: 2, // f64
  last: 2, // f64, inclusive
  subtree_last: 2, // f64: max `last` in this subtree
  left: 1,
  right: 1,
  parent: 1,
  height: 1, // AVL height, >= 1 while in a tree; 0 = not in a tree (RB_EMPTY_NODE)
});

const START = ITNodeL.start >> 1; // f64 index deltas (node offsets are even)
const LAST = ITNodeL.last >> 1;
const SUB = ITNodeL.subtree_last >> 1;
const LEFT = ITNodeL.left;
const RIGHT = ITNodeL.right;
const PARENT = ITNodeL.parent;
const HEIGHT = ITNodeL.height;

/** Set a node's interval and mark it out of any tree (RB_CLEAR_NODE). */
export function interval_tree_node_init(a: Arena, node: number, start: number, last: number): void {
  if ((node & 1) !== 0) throw new RangeError(`interval_tree: node at odd word offset ${node}`);
  const f = a.f64;
  const n = node >> 1;
  f[n + START] = start;
  f[n + LAST] = last;
  f[n + SUB] = last;
  const w = a.i32;
  w[node + LEFT] = 0;
  w[node + RIGHT] = 0;
  w[node + PARENT] = 0;
  w[node + HEIGHT] = 0;
}

/** RB_EMPTY_NODE: not in a tree */
export function interval_tree_node_empty(a: Arena, node: number): boolean {
  return a.i32[node + HEIGHT] === 0;
}

export function it_start(a: Arena, node: number): number {
  return a.f64[(node >> 1) + START];
}

export function it_last(a: Arena, node: number): number {
  return a.f64[(node >> 1) + LAST];
}

// ---- balance and augmentation ----------------------------------------------------------------

function height(w: Int32Array, n: number): number {
  return n === 0 ? 0 : w[n + HEIGHT];
}

/** Recompute height and subtree_last of `n` from its children. */
function pull(a: Arena, n: number): void {
  const w = a.i32;
  const f = a.f64;
  const l = w[n + LEFT];
  const r = w[n + RIGHT];
  const hl = height(w, l);
  const hr = height(w, r);
  w[n + HEIGHT] = (hl > hr ? hl : hr) + 1;
  let m = f[(n >> 1) + LAST];
  if (l !== 0 && f[(l >> 1) + SUB] > m) m = f[(l >> 1) + SUB];
  if (r !== 0 && f[(r >> 1) + SUB] > m) m = f[(r >> 1) + SUB];
  f[(n >> 1) + SUB] = m;
}

/** Point whatever referred to `old` (its parent's child link, or the root) at `nu`. */
function replaceChild(w: Int32Array, root: number, parent: number, old: number, nu: number): void {
  if (parent === 0) w[root] = nu;
  else if (w[parent + LEFT] === old) w[parent + LEFT] = nu;
  else w[parent + RIGHT] = nu;
  if (nu !== 0) w[nu + PARENT] = parent;
}

/** Rotate `x` down to the left (its right child comes up); returns the new subtree top. */
function rotateLeft(a: Arena, root: number, x: number): number {
  const w = a.i32;
  const y = w[x + RIGHT];
  const b = w[y + LEFT];
  replaceChild(w, root, w[x + PARENT], x, y);
  w[x + RIGHT] = b;
  if (b !== 0) w[b + PARENT] = x;
  w[y + LEFT] = x;
  w[x + PARENT] = y;
  pull(a, x);
  pull(a, y);
  return y;
}

function rotateRight(a: Arena, root: number, x: number): number {
  const w = a.i32;
  const y = w[x + LEFT];
  const b = w[y + RIGHT];
  replaceChild(w, root, w[x + PARENT], x, y);
  w[x + LEFT] = b;
  if (b !== 0) w[b + PARENT] = x;
  w[y + RIGHT] = x;
  w[x + PARENT] = y;
  pull(a, x);
  pull(a, y);
  return y;
}

/** Walk from `n` to the root, restoring AVL balance and subtree_last on the way. */
function rebalanceUp(a: Arena, root: number, n: number): void {
  const w = a.i32;
  while (n !== 0) {
    pull(a, n);
    const bal = height(w, w[n + LEFT]) - height(w, w[n + RIGHT]);
    if (bal > 1) {
      const l = w[n + LEFT];
      if (height(w, w[l + LEFT]) < height(w, w[l + RIGHT])) rotateLeft(a, root, l);
      n = rotateRight(a, root, n);
    } else if (bal < -1) {
      const r = w[n + RIGHT];
      if (height(w, w[r + RIGHT]) < height(w, w[r + LEFT])) rotateRight(a, root, r);
      n = rotateLeft(a, root, n);
    }
    n = w[n + PARENT];
  }
}

// ---- insert / remove --------------------------------------------------------------------------

/** interval_tree_insert: `node` (initialised, not in a tree) into the tree rooted at word `root`. */
export function interval_tree_insert(a: Arena, root: number, node: number): void {
  const w = a.i32;
  const f = a.f64;
  if (w[node + HEIGHT] !== 0) throw new Error(`interval_tree_insert: node ${node} is already in a tree`);
  const start = f[(node >> 1) + START];
  w[node + LEFT] = 0;
  w[node + RIGHT] = 0;
  w[node + HEIGHT] = 1;
  f[(node >> 1) + SUB] = f[(node >> 1) + LAST];
  let parent = 0;
  let cur = w[root];
  let left = false;
  while (cur !== 0) {
    parent = cur;
    left = start < f[(cur >> 1) + START];
    cur = left ? w[cur + LEFT] : w[cur + RIGHT];
  }
  w[node + PARENT] = parent;
  if (parent === 0) w[root] = node;
  else if (left) w[parent + LEFT] = node;
  else w[parent + RIGHT] = node;
  rebalanceUp(a, root, parent);
}

/** interval_tree_remove: take `node` out of the tree rooted at word `root`. */
export function interval_tree_remove(a: Arena, root: number, node: number): void {
  const w = a.i32;
  if (w[node + HEIGHT] === 0) throw new Error(`interval_tree_remove: node ${node} is not in a tree`);
  const l = w[node + LEFT];
  const r = w[node + RIGHT];
  const parent = w[node + PARENT];
  let fixFrom: number;
  if (l === 0 || r === 0) {
    const child = l !== 0 ? l : r;
    replaceChild(w, root, parent, node, child);
    fixFrom = parent;
  } else {
    // splice in the successor: the leftmost node of the right subtree
    let s = r;
    while (w[s + LEFT] !== 0) s = w[s + LEFT];
    if (s === r) {
      fixFrom = s;
    } else {
      const sp = w[s + PARENT];
      const sr = w[s + RIGHT];
      w[sp + LEFT] = sr;
      if (sr !== 0) w[sr + PARENT] = sp;
      w[s + RIGHT] = r;
      w[r + PARENT] = s;
      fixFrom = sp;
    }
    w[s + LEFT] = l;
    w[l + PARENT] = s;
    replaceChild(w, root, parent, node, s);
  }
  w[node + LEFT] = 0;
  w[node + RIGHT] = 0;
  w[node + PARENT] = 0;
  w[node + HEIGHT] = 0;
  rebalanceUp(a, root, fixFrom);
}

// ---- overlap queries -----------------------------------------------------------------------------

/**
 * The leftmost node of the subtree at `n` that overlaps [start, last], or 0. `n` must be
 * non-zero. Where the left subtree reaches `start`, the leftmost overlap (if any) is there:
 * nodes right of the leftmost node reaching `start` start no earlier, so if that one starts
 * after `last`, so do they.
 */
function subtreeFirst(a: Arena, n: number, start: number, last: number): number {
  const w = a.i32;
  const f = a.f64;
  for (;;) {
    const l = w[n + LEFT];
    if (l !== 0 && f[(l >> 1) + SUB] >= start) {
      n = l;
      continue;
    }
    if (f[(n >> 1) + START] > last) return 0;
    if (f[(n >> 1) + LAST] >= start) return n;
    const r = w[n + RIGHT];
    if (r === 0 || f[(r >> 1) + SUB] < start) return 0;
    n = r;
  }
}

/** interval_tree_iter_first: the first node (in tree order) overlapping [start, last], or 0. */
export function interval_tree_iter_first(a: Arena, root: number, start: number, last: number): number {
  const n = a.i32[root];
  if (n === 0 || a.f64[(n >> 1) + SUB] < start) return 0;
  return subtreeFirst(a, n, start, last);
}

/** interval_tree_iter_next: the node after `node` (in tree order) overlapping [start, last], or 0. */
export function interval_tree_iter_next(a: Arena, node: number, start: number, last: number): number {
  const w = a.i32;
  const f = a.f64;
  let n = node;
  for (;;) {
    // everything after n inside its own subtree is in the right subtree
    const r = w[n + RIGHT];
    if (r !== 0 && f[(r >> 1) + SUB] >= start) return subtreeFirst(a, r, start, last);
    // climb until we come up from a left child: that parent is next in order
    let child = n;
    n = w[n + PARENT];
    while (n !== 0 && w[n + RIGHT] === child) {
      child = n;
      n = w[n + PARENT];
    }
    if (n === 0) return 0;
    if (f[(n >> 1) + START] > last) return 0; // it and everything after start too late
    if (f[(n >> 1) + LAST] >= start) return n;
  }
}

// ---- checks (tests) ---------------------------------------------------------------------------

/** Validate the whole tree: links, order, AVL balance, heights, subtree_last. Returns problems. */
export function interval_tree_check(a: Arena, root: number): string[] {
  const w = a.i32;
  const f = a.f64;
  const errs: string[] = [];
  const walk = (n: number, parent: number, lo: number, hi: number): [number, number] => {
    if (n === 0) return [0, -Infinity];
    if (w[n + PARENT] !== parent) errs.push(`node ${n}: parent ${w[n + PARENT]}, expected ${parent}`);
    const s = f[(n >> 1) + START];
    if (s < lo || s > hi) errs.push(`node ${n}: start ${s} outside [${lo}, ${hi}]`);
    const [hl, ml] = walk(w[n + LEFT], n, lo, s);
    const [hr, mr] = walk(w[n + RIGHT], n, s, hi);
    if (Math.abs(hl - hr) > 1) errs.push(`node ${n}: unbalanced (${hl} vs ${hr})`);
    const h = Math.max(hl, hr) + 1;
    if (w[n + HEIGHT] !== h) errs.push(`node ${n}: height ${w[n + HEIGHT]}, expected ${h}`);
    const m = Math.max(f[(n >> 1) + LAST], ml, mr);
    if (f[(n >> 1) + SUB] !== m) errs.push(`node ${n}: subtree_last ${f[(n >> 1) + SUB]}, expected ${m}`);
    return [h, m];
  };
  walk(w[root], 0, -Infinity, Infinity);
  return errs;
}

/** Every node in tree order (tests, reports). */
export function interval_tree_nodes(a: Arena, root: number): number[] {
  const w = a.i32;
  const out: number[] = [];
  const stack: number[] = [];
  let n = w[root];
  while (n !== 0 || stack.length > 0) {
    while (n !== 0) {
      stack.push(n);
      n = w[n + LEFT];
    }
    n = stack.pop()!;
    out.push(n);
    n = w[n + RIGHT];
  }
  return out;
}
