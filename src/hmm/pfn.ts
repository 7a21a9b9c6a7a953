// The hmm_pfns encoding (include/linux/hmm.h, reference §3.2): one unsigned long per page,
// flags in the top 11 bits, the pfn in the low bits.
//
// Storage: a Uint32Array with TWO words per page, the little-endian layout of a
// BigUint64Array over the same bytes: word 2i holds bits 0-31 (the pfn), word 2i+1 holds bits
// 32-63 (flags, map order, and pfn bits above 32, which no frame here has). A Float64Array
// cannot hold the value as a number: a double has 53 bits of mantissa and the flags sit at bits
// 53-63. Two words keep BigInt out of the walk, and the array may be a view of the arena (a
// driver that shares its pfns with a device task in another worker).
//
// So every flag constant below is a mask of the HIGH word (bit 63 is high-word bit 31);
// the *_BIT constants give the kernel's bit numbers. default_flags and pfn_flags_mask are
// high-word masks too: only REQ_FAULT and REQ_WRITE are ever tested in them.

/** the kernel's bit numbers, BITS_PER_LONG = 64 */
export const HMM_PFN_VALID_BIT = 63;
export const HMM_PFN_WRITE_BIT = 62;
export const HMM_PFN_ERROR_BIT = 61;
export const HMM_PFN_DMA_MAPPED_BIT = 60;
export const HMM_PFN_P2PDMA_BIT = 59;
export const HMM_PFN_P2PDMA_BUS_BIT = 58;
export const HMM_PFN_ORDER_SHIFT = 53;

const HI = 32;
const hi = (bit: number): number => 2 ** (bit - HI); // a positive mask, so Uint32 words compare without >>> 0

/** output: the entry is valid; input: HMM_PFN_REQ_FAULT */
export const HMM_PFN_VALID = hi(HMM_PFN_VALID_BIT);
/** output: the CPU may write; input: HMM_PFN_REQ_WRITE */
export const HMM_PFN_WRITE = hi(HMM_PFN_WRITE_BIT);
/** output: the page cannot be mirrored (no VMA, no read right, a special mapping) */
export const HMM_PFN_ERROR = hi(HMM_PFN_ERROR_BIT);
/** sticky: carried from input to output */
export const HMM_PFN_DMA_MAPPED = hi(HMM_PFN_DMA_MAPPED_BIT);
export const HMM_PFN_P2PDMA = hi(HMM_PFN_P2PDMA_BIT);
export const HMM_PFN_P2PDMA_BUS = hi(HMM_PFN_P2PDMA_BUS_BIT);
/** the map order, 5 bits at HMM_PFN_ORDER_SHIFT (9 for a PMD mapping) */
const ORDER_SHIFT_HI = HMM_PFN_ORDER_SHIFT - HI;
const ORDER_MASK = 0x1f;

export const HMM_PFN_REQ_FAULT = HMM_PFN_VALID;
export const HMM_PFN_REQ_WRITE = HMM_PFN_WRITE;

/** the top 11 bits, 53-63: everything that is not the pfn */
export const HMM_PFN_FLAGS = 2 ** 32 - 2 ** ORDER_SHIFT_HI;
/** the flags carried from input to output (mm/hmm.c HMM_PFN_INOUT_FLAGS) */
export const HMM_PFN_INOUT_FLAGS = HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA | HMM_PFN_P2PDMA_BUS;

/** pfn bits held in the high word (21 of them: the pfn is 53 bits wide) */
const PFN_HI_MASK = 2 ** ORDER_SHIFT_HI - 1;

/** hmm_pfns words for `npages` pages */
export function hmm_pfns_alloc(npages: number): Uint32Array {
  return new Uint32Array(2 * npages);
}

/** The flags word (bits 32-63) of page i. */
export function hmm_pfn_flags(pfns: Uint32Array, i: number): number {
  return pfns[2 * i + 1];
}

/** Ours: page_to_pfn(hmm_pfn_to_page(hmm_pfns[i])). Exact up to 2**53. */
export function hmm_pfn_to_pfn(pfns: Uint32Array, i: number): number {
  return pfns[2 * i] + (pfns[2 * i + 1] & PFN_HI_MASK) * 2 ** 32;
}

/** hmm_pfn_to_page: the word offset of the page's struct page (zone.page of its pfn). */
export function hmm_pfn_to_page(zone: { page(pfn: number): number }, pfns: Uint32Array, i: number): number {
  return zone.page(hmm_pfn_to_pfn(pfns, i));
}

/** hmm_pfn_to_map_order: log2 of the CPU mapping's size in pages (0 for a PTE). */
export function hmm_pfn_to_map_order(pfns: Uint32Array, i: number): number {
  return (pfns[2 * i + 1] >>> ORDER_SHIFT_HI) & ORDER_MASK;
}

/** Store page i's value: `flags` a high-word mask (order bits included), `pfn` the frame. */
export function hmm_pfn_set(pfns: Uint32Array, i: number, flags: number, pfn: number): void {
  pfns[2 * i] = pfn % 2 ** 32;
  pfns[2 * i + 1] = (flags & HMM_PFN_FLAGS) | (Math.floor(pfn / 2 ** 32) & PFN_HI_MASK);
}

/** The order field as a high-word mask (hmm_pfn_flags_order). */
export function hmm_pfn_flags_order(order: number): number {
  return ((order & ORDER_MASK) << ORDER_SHIFT_HI) >>> 0;
}

/** Page i's whole unsigned long, for tests and reports (BigInt: never on a hot path). */
export function hmm_pfn_value(pfns: Uint32Array, i: number): bigint {
  return (BigInt(pfns[2 * i + 1]) << 32n) | BigInt(pfns[2 * i]);
}

/** "VALID|WRITE pfn 0x1f" */
export function hmm_pfn_label(pfns: Uint32Array, i: number): string {
  const f = hmm_pfn_flags(pfns, i);
  const names: string[] = [];
  if (f & HMM_PFN_VALID) names.push('VALID');
  if (f & HMM_PFN_WRITE) names.push('WRITE');
  if (f & HMM_PFN_ERROR) names.push('ERROR');
  if (f & HMM_PFN_DMA_MAPPED) names.push('DMA_MAPPED');
  if (f & HMM_PFN_P2PDMA) names.push('P2PDMA');
  if (f & HMM_PFN_P2PDMA_BUS) names.push('P2PDMA_BUS');
  const order = hmm_pfn_to_map_order(pfns, i);
  if (order) names.push(`order ${order}`);
  return `${names.join('|') || '0'} pfn 0x${hmm_pfn_to_pfn(pfns, i).toString(16)}`;
}
