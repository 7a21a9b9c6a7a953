// A user's scenario written against the published package ('shadowmm' and its dist modules),
// as `shadowmm run file.ts` loads it through tsx in the command and in every worker. It lives
// outside test/fixtures so the build does not compile it (it needs dist/ to type-check).
// Variants: 'clean' (a process maps, writes and unmaps memory while a kthread waits for it)
// and 'warn' (the kthread also WARNs, which nobody expects: exit 1).

import { defineScenario, type Kernel, type ProcessContext, type TaskContext } from 'shadowmm';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from 'shadowmm/dist/src/mm/mman.js';
import { vm_mmap, vm_munmap } from 'shadowmm/dist/src/mm/mmap.js';
import { put_user } from 'shadowmm/dist/src/mm/uaccess.js';
import { splat } from 'shadowmm/dist/src/sched/splat.js';

interface Args {
  pages: number;
  warn: boolean;
}

async function n<T>(v: T | Promise<T>): Promise<T> {
  return v instanceof Promise ? await v : v;
}

export default defineScenario<Args, { ctl: number }>({
  name: 'pkg-user',
  description: 'a user scenario importing the shadowmm package',
  config: { maxTasks: 8, mem: { pages: 128, pageSize: 4096 } },
  args: { pages: 4, warn: false },
  variants: {
    clean: { description: 'nothing wrong' },
    warn: { description: 'an unexpected WARN', args: { warn: true } },
  },
  start(ctx) {
    const ctl = ctx.alloc(2);
    ctx.process({ name: 'app', fn: 'app', args: { ...ctx.args, ctl } });
    ctx.spawn({ name: 'watcher', fn: 'watcher', args: { ...ctx.args, ctl } });
    return { ctl };
  },
  check(end) {
    return end.word(end.state.ctl) === end.args.pages ? [] : [`the app wrote ${end.word(end.state.ctl)} pages`];
  },
});

export async function app({ k, mm, args }: ProcessContext<Args & { ctl: number }>): Promise<void> {
  const ps = k.mmLayer.pageSize;
  const a = await n(vm_mmap(mm, 0, args.pages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS));
  for (let i = 0; i < args.pages; i++) if ((await n(put_user(i, a + i * ps))) === 0) Atomics.add(k.arena.i32, args.ctl, 1);
  k.sched.wake(args.ctl, Infinity);
  await n(vm_munmap(mm, a, args.pages * ps));
}

export async function watcher({ k, args }: TaskContext<Args & { ctl: number }>): Promise<void> {
  const w = (k as Kernel).arena.i32;
  for (let c = Atomics.load(w, args.ctl); c < args.pages; c = Atomics.load(w, args.ctl)) await n(k.sched.wait(args.ctl, c));
  if (args.warn) splat(k, 'warn', 'WARNING: CPU: 0 PID: 2 at pkg_scenario.ts watcher: WARN_ON(planted)');
}
