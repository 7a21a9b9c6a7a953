// smoke: the smallest useful scenario, reference §9 scenarios 1-2 with the dmirror driver
// (lib/test_hmm.c). A process writes a few pages; the device READs them (0, cpages N, faults 1:
// one fault maps the whole range), then WRITEs new values back (faults 0: the entries are
// already writable), and the CPU sees them. Clean under both schedulers; a sim run takes a few
// ms, which is why `explore` benchmarks use it.

import { defineScenario } from '../run/scenario.js';
import { defineStruct } from '../shm/layout.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../mm/mman.js';
import { vm_mmap, vm_munmap } from '../mm/mmap.js';
import type { ProcessContext } from '../mm/process.js';
import { get_user, put_user } from '../mm/uaccess.js';
import { HMM_DMIRROR_READ, HMM_DMIRROR_WRITE, dmirror_close, dmirror_ioctl, dmirror_open, hmm_dmirror_exit, hmm_dmirror_init } from '../../drivers/dmirror/index.js';
import { settle as n } from '../run/words.js';

export const SmokeL = defineStruct('smoke_result', {
  setup: 1, // 0 ok, else the failing step's errno
  read_ret: 1,
  read_cpages: 1,
  read_faults: 1,
  read_bad: 1, // mirror pages whose word 0 is not what the CPU wrote
  write_ret: 1,
  write_cpages: 1,
  write_faults: 1,
  write_bad: 1, // pages whose word 0 the CPU does not see as the device wrote it
  done: 1,
});

export interface SmokeArgs {
  pages: number;
}

export default defineScenario<SmokeArgs, { res: number }>({
  name: 'smoke',
  description: 'dmirror READs a few CPU-written pages, then WRITEs them (reference §9 scenarios 1-2); clean, a few ms under sim',
  config: {
    maxTasks: 16,
    lockClasses: 96,
    lockdepEdges: 1024,
    eventRecords: 1 << 13,
    klogBytes: 1 << 16,
    strings: 256,
    stringBytes: 8192,
    kmalloc: { 8: 256, 16: 128, 32: 128, 64: 64, 256: 32, 1024: 16 },
    mem: { pages: 256, pageSize: 4096 },
    mm: { pgtables: 64, vmas: 64, procs: 8 },
    device: { devices: 4, sptDirs: 16, sptLeaves: 16 },
  },
  drivers: ['dmirror'],
  args: { pages: 4 },
  start(ctx) {
    const res = ctx.alloc(SmokeL.$size);
    ctx.process({ name: 'hmm-smoke', fn: 'smokeProgram', args: { ...ctx.args, res } });
    return { res };
  },
  check(end) {
    const get = (f: keyof typeof SmokeL.$fields): number => end.word(end.state.res + SmokeL[f]);
    const pages = end.args.pages;
    const out: string[] = [];
    if (get('done') !== 1) out.push('the program did not finish');
    if (get('setup') !== 0) out.push(`setup failed with ${get('setup')}`);
    const read = [get('read_ret'), get('read_cpages'), get('read_faults')];
    if (read.join() !== `0,${pages},1`) out.push(`§9.1 READ: expected ret 0, cpages ${pages}, faults 1; got ret ${read[0]}, cpages ${read[1]}, faults ${read[2]}`);
    if (get('read_bad') !== 0) out.push(`§9.1 READ: ${get('read_bad')} page(s) of the mirror differ from what the CPU wrote`);
    const write = [get('write_ret'), get('write_cpages'), get('write_faults')];
    if (write.join() !== `0,${pages},0`) out.push(`§9.2 WRITE: expected ret 0, cpages ${pages}, faults 0; got ret ${write[0]}, cpages ${write[1]}, faults ${write[2]}`);
    if (get('write_bad') !== 0) out.push(`§9.2 WRITE: the CPU does not see the device's write in ${get('write_bad')} page(s)`);
    return out;
  },
});

/** The process: two buffers, the module, one fd, READ, WRITE, and everything closed again. */
export async function smokeProgram({ k, mm, args }: ProcessContext<SmokeArgs & { res: number }>): Promise<void> {
  const w = k.arena.i32;
  const r = args.res;
  const ps = k.mmLayer.pageSize;
  const N = args.pages;
  const set = (f: keyof typeof SmokeL.$fields, v: number): void => void Atomics.store(w, r + SmokeL[f], v);
  const ptr = await n(vm_mmap(mm, 0, N * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  const mirror = await n(vm_mmap(mm, 0, N * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  if (ptr < 0 || mirror < 0) return set('setup', Math.min(ptr, mirror));
  for (let i = 0; i < N; i++) await n(put_user(i + 1, ptr + i * ps));
  const mod = await hmm_dmirror_init({ chunkPages: 16 });
  if (mod < 0) return set('setup', mod);
  const fd = await dmirror_open(mod, 0);
  if (fd < 0) {
    await hmm_dmirror_exit(mod);
    return set('setup', fd);
  }
  // §9.1: one fault maps the range; the mirror holds what the CPU wrote
  const rd = await dmirror_ioctl(mod, fd, HMM_DMIRROR_READ, { addr: ptr, ptr: mirror, npages: N });
  set('read_ret', rd.ret);
  set('read_cpages', rd.cpages);
  set('read_faults', rd.faults);
  let bad = 0;
  for (let i = 0; i < N; i++) if ((await n(get_user(mirror + i * ps))) !== i + 1) bad++;
  set('read_bad', bad);
  // §9.2: the entries are writable already: no fault
  for (let i = 0; i < N; i++) await n(put_user(100 + i, mirror + i * ps));
  const wr = await dmirror_ioctl(mod, fd, HMM_DMIRROR_WRITE, { addr: ptr, ptr: mirror, npages: N });
  set('write_ret', wr.ret);
  set('write_cpages', wr.cpages);
  set('write_faults', wr.faults);
  bad = 0;
  for (let i = 0; i < N; i++) if ((await n(get_user(ptr + i * ps))) !== 100 + i) bad++;
  set('write_bad', bad);
  await dmirror_close(mod, fd);
  await hmm_dmirror_exit(mod);
  await n(vm_munmap(mm, ptr, N * ps));
  await n(vm_munmap(mm, mirror, N * ps));
  set('done', 1);
}
