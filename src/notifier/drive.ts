// One code path for "may sleep": the notifier's loops are generators that yield what they
// must wait for (a callback's promise, a grace period). drive() runs a generator
// synchronously while nothing it yields is a promise, and returns its value, so an
// invalidation whose callbacks did not sleep returns undefined/number like the lock fast
// paths; at the first promise it continues asynchronously. Errors (and rejections) go back
// into the generator, so its finally blocks unlock what it locked.

export function isThenable(v: unknown): v is PromiseLike<unknown> {
  return typeof v === 'object' && v !== null && typeof (v as { then?: unknown }).then === 'function';
}

export function drive<T>(g: Generator<unknown, T, unknown>): T | Promise<T> {
  let r = g.next();
  while (!r.done) {
    if (isThenable(r.value)) return finish(g, r.value);
    r = g.next(r.value);
  }
  return r.value;
}

async function finish<T>(g: Generator<unknown, T, unknown>, first: PromiseLike<unknown>): Promise<T> {
  let pending: unknown = first;
  for (;;) {
    let r: IteratorResult<unknown, T>;
    try {
      const v = isThenable(pending) ? await pending : pending;
      r = g.next(v);
    } catch (e) {
      r = g.throw(e);
    }
    if (r.done) return r.value;
    pending = r.value;
  }
}
