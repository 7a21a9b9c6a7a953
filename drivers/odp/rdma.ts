// The HCA's side: a queue pair running RDMA work requests against the MR. Each work request
// holds the mkey (odp_mr_get) from the moment the responder looks it up until its completion,
// so deregistration waits for it; its pages go through the MTT (device_access), and a miss
// is an ODP page fault (device_fault -> odp_device_fault) after which the access resumes.
// A fault that fails completes the request with IB_WC_REM_ACCESS_ERR; a deregistered MR
// puts the QP in the error state (the program ends).

import {
  DEV_ATOMIC,
  DEV_READ,
  DEV_WRITE,
  EDEADLK,
  DevL,
  defineStruct,
  device_access,
  device_access_held,
  device_engine_attach,
  device_fault,
  device_miss,
  device_read_sum,
  type Kernel,
  type TaskContext,
} from '../../src/device/index.js';
import { odp_mr_get, odp_mr_put } from './mr.js';

// enum ib_wr_opcode
export const IB_WR_RDMA_WRITE = 0;
export const IB_WR_RDMA_READ = 4;
export const IB_WR_ATOMIC_FETCH_AND_ADD = 6;

// enum ib_wc_status
export const IB_WC_SUCCESS = 0;
export const IB_WC_WR_FLUSH_ERR = 5;
export const IB_WC_REM_ACCESS_ERR = 10;

export interface RdmaQpArgs {
  /** the MR (its device) */
  dev: number;
  engine?: number;
  /** the pages work requests target: page aligned, inside the MR */
  start: number;
  npages: number;
  /** work requests to post */
  wrs: number;
  /** pages per READ/WRITE (default 4); an atomic is one page */
  wrPages?: number;
  /** opcodes drawn from (default all three) */
  ops?: ('read' | 'write' | 'atomic')[];
  seed?: number;
  /** fraction of time busy (default 1: a scheduling point between requests) */
  duty?: number;
  pageNs?: number;
  /** each burst stays in flight this long (a slow DMA) */
  holdNs?: number;
  /** the word of each page the requests touch (default 0) */
  word?: number;
  /** QpResL words for the completions */
  resultAt?: number;
  /** arena word: the QP stops posting when it is non-zero */
  stopWord?: number;
}

/** the QP's completion counters */
export const QpResL = defineStruct('odp_qp_result', {
  wr_ok: 1,
  wr_err: 1, // IB_WC_REM_ACCESS_ERR: a page fault failed
  wr_flushed: 1, // the MR was gone when the request was looked up
  pages: 1,
  faults: 1,
  sum: 1, // of the words RDMA READs read
  last_status: 1,
  livelock: 1,
  done: 1,
});

const OPS = { read: DEV_READ, write: DEV_WRITE, atomic: DEV_ATOMIC } as const;

function rng(seed: number): (n: number) => number {
  let s = seed | 0 || 0x1b873593;
  return (n) => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % n;
  };
}

function stopped(w: Int32Array, a: RdmaQpArgs): boolean {
  return Atomics.load(w, a.dev + DevL.stop) !== 0 || (a.stopWord !== undefined && Atomics.load(w, a.stopWord) !== 0);
}

async function point(k: Kernel): Promise<void> {
  const p = k.sched.point();
  if (p !== undefined) await p;
}

/** Execute one request over n pages from addr; its completion status, or -1 for a livelock. */
async function execute(k: Kernel, a: RdmaQpArgs, eng: number, op: number, addr: number, n: number, value: number, res: number): Promise<number> {
  const w = k.arena.i32;
  const ps = k.mmLayer.pageSize;
  const word = a.word ?? 0;
  for (let left = n; left > 0; ) {
    if (stopped(w, a)) return IB_WC_WR_FLUSH_ERR;
    const done = a.holdNs ? await device_access_held(a.dev, eng, addr, left, op, word, value, a.holdNs) : device_access(a.dev, eng, addr, left, op, word, value);
    if (op === DEV_READ) w[res + QpResL.sum] = (w[res + QpResL.sum] + device_read_sum()) | 0;
    w[res + QpResL.pages] += done;
    addr += done * ps;
    left -= done;
    if (left === 0) break;
    w[res + QpResL.faults]++;
    const f = device_fault(a.dev, eng, device_miss.addr, left, device_miss.flags);
    const ret = typeof f === 'number' ? f : await f;
    if (ret === -EDEADLK) return -1;
    if (ret < 0) return IB_WC_REM_ACCESS_ERR;
    await point(k);
  }
  return IB_WC_SUCCESS;
}

/** The QP: post `wrs` random work requests, one at a time, each completing before the next. */
export async function odp_rdma_qp(ctx: TaskContext<RdmaQpArgs>): Promise<void> {
  const { k, args: a } = ctx;
  const w = k.arena.i32;
  const eng = a.engine ?? 0;
  device_engine_attach(a.dev, eng);
  const res = a.resultAt ?? k.kmalloc.kzalloc(QpResL.$size);
  const ops = (a.ops ?? ['read', 'write', 'atomic']).map((o) => OPS[o]);
  const rnd = rng(a.seed ?? ctx.task.id);
  const ps = k.mmLayer.pageSize;
  try {
    for (let wr = 0; wr < a.wrs && !stopped(w, a); wr++) {
      const op = ops[rnd(ops.length)];
      const n = op === DEV_ATOMIC ? 1 : Math.min(a.wrPages ?? 4, a.npages);
      const addr = a.start + rnd(a.npages - n + 1) * ps;
      if (!odp_mr_get(a.dev)) {
        // the responder finds no such rkey: the QP goes to the error state
        w[res + QpResL.wr_flushed]++;
        w[res + QpResL.last_status] = IB_WC_REM_ACCESS_ERR;
        break;
      }
      let status: number;
      try {
        status = await execute(k, a, eng, op, addr, n, wr + 1, res);
      } finally {
        odp_mr_put(a.dev);
      }
      if (status < 0) {
        w[res + QpResL.livelock] = 1;
        break;
      }
      w[res + QpResL.last_status] = status;
      if (status === IB_WC_SUCCESS) w[res + QpResL.wr_ok]++;
      else if (status === IB_WC_REM_ACCESS_ERR) w[res + QpResL.wr_err]++;
      const duty = a.duty ?? 1;
      const idle = duty >= 1 ? k.sched.point() : k.sched.sleep(n * (a.pageNs ?? 100) * (1 / Math.max(duty, 1e-3) - 1));
      if (idle !== undefined) await idle;
    }
  } finally {
    Atomics.store(w, res + QpResL.done, 1);
    k.sched.wake(res + QpResL.done, Infinity);
    if (a.resultAt === undefined) k.kmalloc.kfree(res);
  }
}
