// The I/O priorities the reader threads can run at, by the names the config uses (ioprio_set(2)).
// Apart from reader.ts so that the config can check a name without loading the addon.
//   normal           the kernel's default: best-effort, at the level the process's nice value gives
//   best-effort-low  best-effort at the lowest level (7): the machine's other I/O goes first
//   idle             only when no other I/O wants the disk: a busy disk can stall the agent's reads
// Only schedulers that know priorities (bfq; mq-deadline by class) act on them; none ignores them.
export const IO_PRIORITIES = ['normal', 'best-effort-low', 'idle'] as const;
export type IoPriority = (typeof IO_PRIORITIES)[number];
