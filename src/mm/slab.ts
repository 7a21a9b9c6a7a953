// kmalloc/kzalloc with a gfp: the arena's size-class allocator behind the same lockdep and
// context rules as the page allocator, so `lock(L); kzalloc(..., GFP_KERNEL)` under a lock the
// notifier takes is reported (reference §6.1, §6.3; scenario 23). Returns a word offset, 0 = -ENOMEM.

import type { Kernel } from '../sched/kernel.js';
import { might_alloc } from './page_alloc.js';

export function kzalloc(k: Kernel, words: number, gfp: number): number {
  might_alloc(k, gfp);
  return k.kmalloc.kzalloc(words);
}

export const kmalloc = kzalloc;

export function kfree(k: Kernel, at: number): void {
  if (at !== 0) k.kmalloc.kfree(at);
}
