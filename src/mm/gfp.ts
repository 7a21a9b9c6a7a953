// gfp_t: what an allocation may do to get memory. The bit values are ours; the names and
// the combinations are the kernel's.

export const __GFP_HIGH = 0x20; // may use the reserves below the min watermark
export const __GFP_IO = 0x40;
export const __GFP_FS = 0x80;
export const __GFP_ZERO = 0x100;
export const __GFP_DIRECT_RECLAIM = 0x400; // may sleep and reclaim in the caller
export const __GFP_KSWAPD_RECLAIM = 0x800; // may wake kswapd
export const __GFP_NOWARN = 0x2000;
export const __GFP_RETRY_MAYFAIL = 0x4000;
export const __GFP_NOFAIL = 0x8000;
export const __GFP_NORETRY = 0x10000;
export const __GFP_ACCOUNT = 0x400000; // charge to the current memcg

export const __GFP_RECLAIM = __GFP_DIRECT_RECLAIM | __GFP_KSWAPD_RECLAIM;

export const GFP_ATOMIC = __GFP_HIGH | __GFP_KSWAPD_RECLAIM;
export const GFP_NOWAIT = __GFP_KSWAPD_RECLAIM;
export const GFP_NOIO = __GFP_RECLAIM;
export const GFP_NOFS = __GFP_RECLAIM | __GFP_IO;
export const GFP_KERNEL = __GFP_RECLAIM | __GFP_IO | __GFP_FS;
export const GFP_KERNEL_ACCOUNT = GFP_KERNEL | __GFP_ACCOUNT;
export const GFP_USER = GFP_KERNEL;
export const GFP_HIGHUSER = GFP_USER;
export const GFP_HIGHUSER_MOVABLE = GFP_HIGHUSER;

/** gfpflags_allow_blocking: may this allocation sleep? */
export function gfpflags_allow_blocking(gfp: number): boolean {
  return (gfp & __GFP_DIRECT_RECLAIM) !== 0;
}

export function gfpName(gfp: number): string {
  for (const [name, v] of [
    ['GFP_KERNEL_ACCOUNT', GFP_KERNEL_ACCOUNT],
    ['GFP_KERNEL', GFP_KERNEL],
    ['GFP_NOFS', GFP_NOFS],
    ['GFP_NOIO', GFP_NOIO],
    ['GFP_ATOMIC', GFP_ATOMIC],
    ['GFP_NOWAIT', GFP_NOWAIT],
  ] as const) {
    if ((gfp & ~(__GFP_ZERO | __GFP_NOWARN)) === v) return name;
  }
  return `0x${gfp.toString(16)}`;
}
