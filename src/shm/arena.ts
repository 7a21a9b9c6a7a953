// The arena: one SharedArrayBuffer per kernel instance, holding every byte of kernel state.
// Layout is planned once at boot (each layer asks for its regions), then the same layout
// is handed to every worker, so any thread can run any kernel path over the same memory.

export interface ArenaLayout {
  readonly totalWords: number;
  /** region name -> [word offset, word count] */
  readonly regions: Readonly<Record<string, readonly [number, number]>>;
}

/**
 * The arena's first 4 KiB are a guard page: struct offsets are word offsets, so a struct
 * "pointer" of 0 (a failed allocation, a freed object) written through lands here instead of
 * in the first region. Only the magic and size words are used; the rest must stay zero, and
 * runs end with a check (nullGuardDamage) that reports a NULL-pointer write.
 */
const HEADER_WORDS = 1024;
const GUARD_FROM = 2;
const MAGIC = 0x6d6d6873; // 'shmm'

export class ArenaPlan {
  private top = HEADER_WORDS;
  private readonly regions: Record<string, [number, number]> = {};

  /** Reserve `words` Int32 words under `name`; returns the word offset (8-byte aligned). */
  region(name: string, words: number): number {
    if (this.regions[name]) throw new Error(`arena plan: region '${name}' reserved twice`);
    if (!Number.isInteger(words) || words < 0) throw new Error(`arena plan: region '${name}' has bad size ${words}`);
    this.top += this.top & 1;
    const off = this.top;
    this.regions[name] = [off, words];
    this.top += words;
    return off;
  }

  layout(): ArenaLayout {
    return { totalWords: this.top + (this.top & 1), regions: { ...this.regions } };
  }
}

export class Arena {
  readonly i32: Int32Array;
  readonly u32: Uint32Array;
  readonly u8: Uint8Array;
  readonly f64: Float64Array;

  private constructor(readonly sab: SharedArrayBuffer, readonly layout: ArenaLayout) {
    this.i32 = new Int32Array(sab);
    this.u32 = new Uint32Array(sab);
    this.u8 = new Uint8Array(sab);
    this.f64 = new Float64Array(sab);
  }

  static create(layout: ArenaLayout): Arena {
    const a = new Arena(new SharedArrayBuffer(layout.totalWords * 4), layout);
    a.i32[0] = MAGIC;
    a.i32[1] = layout.totalWords;
    return a;
  }

  /** View an existing arena (a worker attaching to the kernel it was handed). */
  static attach(sab: SharedArrayBuffer, layout: ArenaLayout): Arena {
    const a = new Arena(sab, layout);
    if (a.i32[0] !== MAGIC || a.i32[1] !== layout.totalWords) {
      throw new Error('arena attach: buffer does not match the layout (wrong magic or size)');
    }
    return a;
  }

  /** The first nonzero guard word (a write through a NULL struct pointer), or -1 if intact. */
  nullGuardDamage(): number {
    const w = this.i32;
    for (let i = GUARD_FROM; i < HEADER_WORDS; i++) if (w[i] !== 0) return i;
    return -1;
  }

  region(name: string): number {
    const r = this.layout.regions[name];
    if (!r) throw new Error(`arena: no region '${name}'`);
    return r[0];
  }

  regionWords(name: string): number {
    const r = this.layout.regions[name];
    if (!r) throw new Error(`arena: no region '${name}'`);
    return r[1];
  }

  /** A snapshot is a byte copy: restoring it gives an identical kernel. */
  snapshot(): Uint8Array {
    return this.u8.slice();
  }

  static restore(snapshot: Uint8Array, layout: ArenaLayout): Arena {
    if (snapshot.byteLength !== layout.totalWords * 4) {
      throw new Error(`arena restore: snapshot is ${snapshot.byteLength} bytes, layout needs ${layout.totalWords * 4}`);
    }
    const sab = new SharedArrayBuffer(snapshot.byteLength);
    new Uint8Array(sab).set(snapshot);
    return Arena.attach(sab, layout);
  }
}
