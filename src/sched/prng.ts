// xoshiro128**: the sim's PRNG. Its four state words live in the arena, so a snapshot
// carries the random stream with it and a replay needs only (seed, config).

export class Prng {
  constructor(
    private readonly w: Int32Array,
    private readonly at: number,
  ) {}

  seed(seed: number): void {
    // splitmix32 to spread a small seed over 128 bits of state
    let s = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      s = (s + 0x9e3779b9) | 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      this.w[this.at + i] = (z ^ (z >>> 16)) | (i === 0 ? 1 : 0);
    }
  }

  next(): number {
    const w = this.w;
    const a = this.at;
    const s0 = w[a], s1 = w[a + 1], s2 = w[a + 2], s3 = w[a + 3];
    const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    const n2 = s2 ^ s0;
    const n3 = s3 ^ s1;
    w[a + 1] = s1 ^ n2;
    w[a] = s0 ^ n3;
    w[a + 2] = n2 ^ t;
    w[a + 3] = rotl(n3, 11);
    return r;
  }

  /** uniform in [0, n) */
  below(n: number): number {
    return Math.floor((this.next() / 4294967296) * n);
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
