// errno values, as the kernel's asm-generic/errno-base.h and errno.h number them. Kernel
// functions return them negated (`return -EINVAL`), and pointer-returning ones return either
// a word offset (> 0) or a negative errno, which `IS_ERR` tells apart.

export const EPERM = 1;
export const ENOENT = 2;
export const EINTR = 4;
export const EBADF = 9;
export const EAGAIN = 11;
export const ENOMEM = 12;
export const EACCES = 13;
export const EFAULT = 14;
export const EBUSY = 16;
export const EEXIST = 17;
export const EINVAL = 22;
export const EDEADLK = 35;
export const EOVERFLOW = 75;
export const EOPNOTSUPP = 95;

const NAMES: Record<number, string> = {
  [EPERM]: 'EPERM',
  [ENOENT]: 'ENOENT',
  [EINTR]: 'EINTR',
  [EBADF]: 'EBADF',
  [EAGAIN]: 'EAGAIN',
  [ENOMEM]: 'ENOMEM',
  [EACCES]: 'EACCES',
  [EFAULT]: 'EFAULT',
  [EBUSY]: 'EBUSY',
  [EEXIST]: 'EEXIST',
  [EINVAL]: 'EINVAL',
  [EDEADLK]: 'EDEADLK',
  [EOVERFLOW]: 'EOVERFLOW',
  [EOPNOTSUPP]: 'EOPNOTSUPP',
};

/** `-11` -> `'-EAGAIN'`; unknown numbers are printed as they are. */
export function errname(ret: number): string {
  const n = NAMES[-ret];
  return n ? `-${n}` : String(ret);
}

/** IS_ERR for offset-or-errno returns: offsets are positive, errors negative. */
export function IS_ERR(v: number): boolean {
  return v < 0;
}
