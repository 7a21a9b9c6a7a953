// struct page and the physical frames. Each frame has a struct page record and
// `pageSize` bytes of contents, both in the arena. pfn 0 is the shared zero page.
// `gen` moves whenever a frame is freed, so a stale (pfn, gen) pair a device kept is detectable.

import { defineStruct } from '../shm/layout.js';

export const PageL = defineStruct('page', {
  flags: 1, // PG_*
  refcount: 1, // _refcount
  mapcount: 1, // PTEs mapping this frame (the kernel stores this minus one)
  pincount: 1, // FOLL_PIN pins (each also adds GUP_PIN_COUNTING_BIAS to refcount)
  memcg: 1, // charged memcg id, 0 = root/none
  lruPrev: 1,
  lruNext: 1,
  gen: 1, // bumped at every free
  next: 1, // free-list link
  private: 1, // swap entry / device-private owner
  mapping: 1, // rmap: first mapping node
  owner: 1, // device-private: pgmap owner id
  index: 2, // f64: virtual page index in the first mapping
});

export const PG_locked = 1 << 0;
export const PG_referenced = 1 << 1;
export const PG_uptodate = 1 << 2;
export const PG_dirty = 1 << 3;
export const PG_lru = 1 << 4;
export const PG_active = 1 << 5;
export const PG_reserved = 1 << 6;
export const PG_anon = 1 << 7; // PageAnon: the mapping is an anon rmap
export const PG_swapcache = 1 << 8;
export const PG_swapbacked = 1 << 9;
export const PG_device_private = 1 << 10; // ZONE_DEVICE private memory
export const PG_anon_exclusive = 1 << 11;
export const PG_free = 1 << 12; // on the free list (ours: catches use after free)
export const PG_waiters = 1 << 24; // a task sleeps in folio_lock on this page

export const GUP_PIN_COUNTING_BIAS = 1024;

export const ZERO_PFN = 0;
