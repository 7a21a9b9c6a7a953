// lib/test_hmm_uapi.h: the commands, the snapshot byte values and the memory types, with the
// kernel's names and numbers. A command is _IOWR('H', nr, struct hmm_dmirror_cmd); we keep the
// nr (the low byte), which is what the selftests tell apart.

/** struct hmm_dmirror_cmd: five __u64, 40 bytes in user memory */
export interface HmmDmirrorCmd {
  /** (in) user address the device will read/write */
  addr: number;
  /** (in) user address where device data is copied to/from */
  ptr: number;
  /** (in) number of pages to read/write */
  npages: number;
  /** (out) number of pages copied */
  cpages?: number;
  /** (out) number of device page faults seen */
  faults?: number;
}

/** What an ioctl hands back: its return, and the out fields as the caller's struct holds them. */
export interface DmirrorResult {
  ret: number;
  cpages: number;
  faults: number;
  /**
   * READ/WRITE of an mm that is gone: test_hmm spins forever (dmirror_fault returns 0 without
   * filling); we stop after a bound, report a 'liveness' record and set this.
   */
  livelock?: boolean;
}

export const HMM_DMIRROR_CMD_BYTES = 40;

export const HMM_DMIRROR_READ = 0x00;
export const HMM_DMIRROR_WRITE = 0x01;
export const HMM_DMIRROR_MIGRATE_TO_DEV = 0x02;
export const HMM_DMIRROR_MIGRATE_TO_SYS = 0x03;
export const HMM_DMIRROR_SNAPSHOT = 0x04;
export const HMM_DMIRROR_EXCLUSIVE = 0x05;
export const HMM_DMIRROR_CHECK_EXCLUSIVE = 0x06;
export const HMM_DMIRROR_RELEASE = 0x07;
export const HMM_DMIRROR_FLAGS = 0x08;

export const HMM_DMIRROR_FLAG_FAIL_ALLOC = 1 << 0;

export const HMM_DMIRROR_PROT_ERROR = 0xff;
export const HMM_DMIRROR_PROT_NONE = 0x00;
export const HMM_DMIRROR_PROT_READ = 0x01;
export const HMM_DMIRROR_PROT_WRITE = 0x02;
export const HMM_DMIRROR_PROT_PMD = 0x04;
export const HMM_DMIRROR_PROT_PUD = 0x08;
export const HMM_DMIRROR_PROT_ZERO = 0x10;
export const HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL = 0x20;
export const HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE = 0x30;
export const HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL = 0x40;
export const HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE = 0x50;

/* 0 is reserved to catch uninitialized type fields */
export const HMM_DMIRROR_MEMORY_DEVICE_PRIVATE = 1;
export const HMM_DMIRROR_MEMORY_DEVICE_COHERENT = 2;

export const HMM_DMIRROR_CMD_NAMES: Record<number, string> = {
  [HMM_DMIRROR_READ]: 'HMM_DMIRROR_READ',
  [HMM_DMIRROR_WRITE]: 'HMM_DMIRROR_WRITE',
  [HMM_DMIRROR_MIGRATE_TO_DEV]: 'HMM_DMIRROR_MIGRATE_TO_DEV',
  [HMM_DMIRROR_MIGRATE_TO_SYS]: 'HMM_DMIRROR_MIGRATE_TO_SYS',
  [HMM_DMIRROR_SNAPSHOT]: 'HMM_DMIRROR_SNAPSHOT',
  [HMM_DMIRROR_EXCLUSIVE]: 'HMM_DMIRROR_EXCLUSIVE',
  [HMM_DMIRROR_CHECK_EXCLUSIVE]: 'HMM_DMIRROR_CHECK_EXCLUSIVE',
  [HMM_DMIRROR_RELEASE]: 'HMM_DMIRROR_RELEASE',
  [HMM_DMIRROR_FLAGS]: 'HMM_DMIRROR_FLAGS',
};
